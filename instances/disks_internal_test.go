package instances

import (
	"slices"
	"testing"

	"github.com/zygote/zygote/errdefs"
)

// TestResolveWorkload: docker's rules for an image's config and a
// request's overrides.
func TestResolveWorkload(t *testing.T) {
	img := ImageConfig{Name: "x", Entrypoint: []string{"/ep"}, Cmd: []string{"default"}, Env: map[string]string{"PATH": "/bin", "A": "1"}, WorkingDir: "/w", User: "u"}
	for _, tc := range []struct {
		name     string
		img      ImageConfig
		req      CreateRequest
		ep, cmd  []string
		env      []string
		errClass func(error) bool
	}{
		{"image defaults", img, CreateRequest{}, []string{"/ep"}, []string{"default"}, []string{"A=1", "PATH=/bin"}, nil},
		{"cmd replaced", img, CreateRequest{Cmd: []string{"other"}}, []string{"/ep"}, []string{"other"}, []string{"A=1", "PATH=/bin"}, nil},
		{"entrypoint replaced drops cmd", img, CreateRequest{Entrypoint: []string{"/x"}}, []string{"/x"}, nil, []string{"A=1", "PATH=/bin"}, nil},
		{"both replaced", img, CreateRequest{Entrypoint: []string{"/x"}, Cmd: []string{"y"}}, []string{"/x"}, []string{"y"}, []string{"A=1", "PATH=/bin"}, nil},
		{"empty entrypoint keeps cmd given", img, CreateRequest{Entrypoint: []string{}, Cmd: []string{"sh"}}, []string{}, []string{"sh"}, []string{"A=1", "PATH=/bin"}, nil},
		{"env laid over", img, CreateRequest{Env: map[string]string{"A": "2", "B": "3"}}, []string{"/ep"}, []string{"default"}, []string{"A=2", "B=3", "PATH=/bin"}, nil},
		{"nothing to run", ImageConfig{Name: "x"}, CreateRequest{}, nil, nil, nil, errdefs.IsInvalidArgument},
		{"entrypoint emptied and no cmd", img, CreateRequest{Entrypoint: []string{}}, nil, nil, nil, errdefs.IsInvalidArgument},
	} {
		w, err := resolveWorkload(tc.img, tc.req)
		if tc.errClass != nil {
			if !tc.errClass(err) {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err != nil || !slices.Equal(w.Entrypoint, tc.ep) || !slices.Equal(w.Cmd, tc.cmd) || !slices.Equal(w.Env, tc.env) || w.WorkingDir != "/w" || w.User != "u" {
			t.Errorf("%s: %+v %v", tc.name, w, err)
		}
	}
}
