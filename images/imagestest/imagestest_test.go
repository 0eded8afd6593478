package imagestest

import "testing"

// TestDebianPythonTar builds (or finds) the cached Debian image.
func TestDebianPythonTar(t *testing.T) {
	p := DebianPythonTar(t)
	t.Log(p)
}
