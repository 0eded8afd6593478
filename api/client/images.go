package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/zygote/zygote/api"
)

// PullImage starts a pull (POST /images) and returns the image's state;
// follow it with GetImage until it is ready or failed.
func (c *Client) PullImage(ctx context.Context, req api.PullImageRequest) (api.Image, error) {
	var out api.Image
	return out, c.do(ctx, "POST", "/images", req, &out)
}

// ListImages lists every image, ready or not.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	return out, c.do(ctx, "GET", "/images", nil, &out)
}

// GetImage returns an image by reference (short names allowed) or digest.
func (c *Client) GetImage(ctx context.Context, ref string) (api.Image, error) {
	var out api.Image
	return out, c.do(ctx, "GET", "/images/"+esc(ref), nil, &out)
}

// DeleteImage deletes an image by reference or digest.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	return c.do(ctx, "DELETE", "/images/"+esc(ref), nil, nil)
}

// ImportImage streams an archive (docker save, or an OCI layout as a tar)
// to POST /images/import and returns the image once it is ready. name,
// when set, is the reference to store it as.
func (c *Client) ImportImage(ctx context.Context, archive io.Reader, name string) (api.Image, error) {
	path := "/images/import"
	if name != "" {
		path += "?" + url.Values{"name": {name}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, "POST", c.base+path, archive)
	if err != nil {
		return api.Image{}, err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return api.Image{}, fmt.Errorf("cannot reach the zygote daemon (is `zygote serve` running?): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return api.Image{}, decodeError(resp)
	}
	var out api.Image
	return out, json.NewDecoder(resp.Body).Decode(&out)
}
