package guest

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
)

// The newc ("070701") cpio format, as the kernel's initramfs unpacker reads
// it: a 110-byte ASCII header of 13 eight-digit hex fields, the NUL
// terminated name padded to 4 bytes, the data padded to 4 bytes; the
// archive ends with an entry named TRAILER!!!.

const (
	cpioMagic   = "070701"
	cpioTrailer = "TRAILER!!!"

	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

// CpioHeader describes one entry.
type CpioHeader struct {
	Name string // relative, no leading slash
	// Mode holds the file type bits (S_IF*) and the permissions.
	Mode         uint32
	UID, GID     uint32
	Mtime        uint32
	Size         int64
	RdevMajor    uint32
	RdevMinor    uint32
	Nlink        uint32
	Ino          uint32
	LinkTarget   string // symlinks: the target (also the entry's data)
	IsDir        bool
	IsSymlink    bool
	IsCharDevice bool
}

// CpioWriter writes a newc archive. Entries get increasing inode numbers,
// uid/gid 0 and mtime 0, so that the same calls give the same bytes.
type CpioWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
	err error
}

// NewCpioWriter returns a writer on w. Close writes the trailer.
func NewCpioWriter(w io.Writer) *CpioWriter { return &CpioWriter{w: bufio.NewWriterSize(w, 1<<20)} }

func (c *CpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *CpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *CpioWriter) header(name string, mode uint32, nlink uint32, size int64, rmaj, rmin uint32) {
	if c.err == nil && (name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\x00")) {
		c.err = fmt.Errorf("cpio: bad entry name %q", name)
	}
	if c.err == nil && size > 0xffffffff {
		c.err = fmt.Errorf("cpio: %s is larger than 4 GiB", name)
	}
	c.ino++
	fields := []uint32{c.ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rmaj, rmin, uint32(len(name) + 1), 0}
	var b strings.Builder
	b.WriteString(cpioMagic)
	for _, f := range fields {
		fmt.Fprintf(&b, "%08x", f)
	}
	b.WriteString(name)
	b.WriteByte(0)
	c.write([]byte(b.String()))
	c.pad()
}

// unixPerm converts permission bits, sticky/setuid/setgid included.
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	return p
}

// Dir adds a directory.
func (c *CpioWriter) Dir(name string, perm fs.FileMode) error {
	c.header(name, modeDir|unixPerm(perm), 2, 0, 0, 0)
	return c.err
}

// File adds a regular file of size bytes read from r.
func (c *CpioWriter) File(name string, perm fs.FileMode, size int64, r io.Reader) error {
	c.header(name, modeReg|unixPerm(perm), 1, size, 0, 0)
	if c.err != nil {
		return c.err
	}
	n, err := io.Copy(c.w, io.LimitReader(r, size))
	c.off += n
	if err == nil && n != size {
		err = fmt.Errorf("cpio: %s: got %d bytes, want %d", name, n, size)
	}
	if err != nil {
		c.err = err
		return err
	}
	c.pad()
	return c.err
}

// Symlink adds a symbolic link.
func (c *CpioWriter) Symlink(name, target string) error {
	c.header(name, modeLink|0o777, 1, int64(len(target)), 0, 0)
	c.write([]byte(target))
	c.pad()
	return c.err
}

// CharDevice adds a character device node.
func (c *CpioWriter) CharDevice(name string, perm fs.FileMode, major, minor uint32) error {
	c.header(name, modeChr|unixPerm(perm), 1, 0, major, minor)
	return c.err
}

// Close writes the trailer and flushes. It does not close the underlying
// writer.
func (c *CpioWriter) Close() error {
	c.header(cpioTrailer, 0, 1, 0, 0, 0)
	if c.err == nil {
		c.err = c.w.Flush()
	}
	return c.err
}

// CpioReader reads a newc archive (for tests and inspection).
type CpioReader struct {
	r   *bufio.Reader
	off int64
	// left is the unread data of the current entry plus its padding.
	left, pad int64
}

// NewCpioReader returns a reader on r.
func NewCpioReader(r io.Reader) *CpioReader { return &CpioReader{r: bufio.NewReader(r)} }

func (c *CpioReader) skip(n int64) error {
	m, err := io.CopyN(io.Discard, c.r, n)
	c.off += m
	return err
}

// Next advances to the next entry; it returns io.EOF at the trailer.
func (c *CpioReader) Next() (*CpioHeader, error) {
	if err := c.skip(c.left + c.pad); err != nil {
		return nil, fmt.Errorf("cpio: %w", err)
	}
	c.left, c.pad = 0, 0
	var raw [110]byte
	n, err := io.ReadFull(c.r, raw[:])
	c.off += int64(n)
	if err != nil {
		return nil, fmt.Errorf("cpio: header at %d: %w", c.off-int64(n), err)
	}
	if string(raw[:6]) != cpioMagic {
		return nil, fmt.Errorf("cpio: bad magic %q at %d", raw[:6], c.off-110)
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("cpio: bad header field %d: %w", i, err)
		}
		f[i] = uint32(v)
	}
	name := make([]byte, f[11])
	n, err = io.ReadFull(c.r, name)
	c.off += int64(n)
	if err != nil {
		return nil, fmt.Errorf("cpio: name: %w", err)
	}
	if err := c.skip((4 - c.off%4) % 4); err != nil {
		return nil, err
	}
	h := &CpioHeader{
		Name: strings.TrimRight(string(name), "\x00"), Ino: f[0], Mode: f[1], UID: f[2], GID: f[3],
		Nlink: f[4], Mtime: f[5], Size: int64(f[6]), RdevMajor: f[9], RdevMinor: f[10],
	}
	if h.Name == cpioTrailer {
		return nil, io.EOF
	}
	h.IsDir = h.Mode&0o170000 == modeDir
	h.IsSymlink = h.Mode&0o170000 == modeLink
	h.IsCharDevice = h.Mode&0o170000 == modeChr
	c.left = h.Size
	c.pad = (4 - (c.off+h.Size)%4) % 4
	if h.IsSymlink {
		b := make([]byte, h.Size)
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, fmt.Errorf("cpio: symlink %s: %w", h.Name, err)
		}
		h.LinkTarget = string(b)
	}
	return h, nil
}

// Read reads the current entry's data.
func (c *CpioReader) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	c.off += int64(n)
	return n, err
}
