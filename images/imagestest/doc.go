// Package imagestest holds test support for the images package and for the
// end-to-end tests that boot image-based instances: a real OCI registry
// (Debian's docker-registry, CNCF distribution) started on 127.0.0.1 by the
// test, helpers to build small images from files the test makes (a
// busybox-static image, a static Go program, arbitrary tar layers) and to
// push them, and one real distribution image (Debian bookworm minbase with
// python3, built once by mmdebstrap and cached).
//
// Only tests import it. Every helper registers its own teardown with
// t.Cleanup and touches only what it started or made itself. Helpers that
// need a tool that is missing skip the test with the package to install;
// with ZYGOTE_REQUIRE_PRIVILEGED=1 they fail instead.
package imagestest
