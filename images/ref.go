package images

import (
	"fmt"
	"net"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/zygote/zygote/errdefs"
)

// ParseRef parses an OCI image reference ("busybox", "docker.io/library/x:tag",
// "host:port/repo:tag", "repo@sha256:…") and returns its normalized name:
// Docker Hub names gain "docker.io/" and "library/", a missing tag becomes
// ":latest". An unparsable reference is errdefs.ErrInvalidArgument.
func ParseRef(ref string) (string, error) {
	r, err := parse(ref, nil)
	if err != nil {
		return "", err
	}
	return normalized(r), nil
}

func parse(ref string, insecure []string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w: %v", ref, errdefs.ErrInvalidArgument, err)
	}
	if allowPlainHTTP(r.Context().RegistryStr(), insecure) {
		r, err = name.ParseReference(ref, name.Insecure)
		if err != nil {
			return nil, fmt.Errorf("image reference %q: %w: %v", ref, errdefs.ErrInvalidArgument, err)
		}
	}
	return r, nil
}

// normalized renders r with Docker Hub spelled docker.io (go-containerregistry
// says index.docker.io).
func normalized(r name.Reference) string {
	repo := r.Context().RepositoryStr()
	reg := r.Context().RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	switch v := r.(type) {
	case name.Digest:
		return reg + "/" + repo + "@" + v.DigestStr()
	default:
		return reg + "/" + repo + ":" + r.Identifier()
	}
}

// allowPlainHTTP says whether registry (host[:port]) may be reached over
// plain http: loopback (127.0.0.0/8, ::1, localhost) always, and any
// registry named in the configured insecure list (host or host:port).
func allowPlainHTTP(registry string, insecure []string) bool {
	host := registry
	if h, _, err := net.SplitHostPort(registry); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, r := range insecure {
		if r == registry || r == host {
			return true
		}
	}
	return false
}
