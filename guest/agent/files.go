package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/zygote/zygote/guest/agentproto"
)

// Stat describes a guest path. A path that does not exist is not an error:
// Exists is false. Error is set when it could not be examined.
func (c *Client) Stat(ctx context.Context, path string, followLinks bool) (agentproto.PathInfo, error) {
	resp, err := c.call(ctx, agentproto.Request{Op: agentproto.OpStat, Stat: &agentproto.StatRequest{Path: path, FollowLinks: followLinks}})
	if err != nil {
		return agentproto.PathInfo{}, err
	}
	if resp.Stat == nil {
		return agentproto.PathInfo{}, fmt.Errorf("agent stat %s: empty answer from guest", path)
	}
	return *resp.Stat, nil
}

// CopyFromFunc receives one entry of a copy out of the guest. For a regular
// file r yields exactly h.Size bytes; for a directory or a symlink it is
// empty. Whatever fn leaves unread is discarded. An error from fn ends the
// copy and is returned by CopyFrom.
type CopyFromFunc func(h agentproto.FileHeader, r io.Reader) error

// CopyFrom streams the tree at req.Path out of the guest, one entry at a
// time (parents first), and returns the number of file bytes received. Only
// one chunk of a file is in memory at a time: the guest sends as fast as
// fn consumes.
func (c *Client) CopyFrom(ctx context.Context, req agentproto.CopyFromRequest, fn CopyFromFunc) (int64, error) {
	op := "copy from " + req.Path
	st, done, err := c.openStream(ctx, agentproto.OpCopyFrom)
	if err != nil {
		return 0, err
	}
	defer done()
	if _, err := c.exchange(ctx, st, op, agentproto.Request{Op: agentproto.OpCopyFrom, CopyFrom: &req}); err != nil {
		return 0, err
	}
	var total int64
	for {
		t, b, err := agentproto.ReadMsg(st)
		if err != nil {
			return total, c.ctxOrLost(ctx, op, err)
		}
		switch t {
		case agentproto.MsgFileHeader:
			var h agentproto.FileHeader
			if err := json.Unmarshal(b, &h); err != nil {
				return total, fmt.Errorf("agent %s: bad header: %w", op, err)
			}
			r := &entryReader{st: st}
			ferr := fn(h, r)
			if r.err == nil && !r.ended {
				_, ferr2 := io.Copy(io.Discard, r)
				ferr = errors.Join(ferr, ferr2)
			}
			total += r.n
			if r.err != nil && !errors.Is(r.err, io.EOF) {
				return total, c.ctxOrLost(ctx, op, r.err)
			}
			if ferr != nil {
				return total, fmt.Errorf("%s: %s: %w", op, h.Path, ferr)
			}
			if r.n != h.Size && !h.IsDir && !h.IsSymlink {
				return total, fmt.Errorf("agent %s: %s: guest sent %d bytes, header said %d", op, h.Path, r.n, h.Size)
			}
		case agentproto.MsgCopyDone:
			var res agentproto.CopyResult
			if err := json.Unmarshal(b, &res); err != nil {
				return total, fmt.Errorf("agent %s: bad result: %w", op, err)
			}
			if res.Error != nil {
				return total, fmt.Errorf("agent %s: %w", op, remoteError(res.Error))
			}
			return total, nil
		default:
			return total, fmt.Errorf("agent %s: unexpected %s message", op, t)
		}
	}
}

// entryReader reads one entry's MsgFileData until MsgFileEnd.
type entryReader struct {
	st    io.Reader
	rest  []byte
	n     int64
	ended bool
	err   error // a stream error (not the entry's EOF)
}

func (r *entryReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.ended {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		t, b, err := agentproto.ReadMsg(r.st)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			r.err = err
			return 0, err
		}
		switch t {
		case agentproto.MsgFileData:
			r.rest = b
		case agentproto.MsgFileEnd:
			r.ended = true
		default:
			r.err = fmt.Errorf("unexpected %s message in a file", t)
			return 0, r.err
		}
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	r.n += int64(n)
	return n, nil
}

// CopyTo creates one entry in the guest: a directory (req.IsDir), a
// symlink (req.LinkTarget) or a regular file whose bytes are read from r
// until EOF. It returns the number of bytes the guest wrote. A regular file
// appears under its name only once complete.
func (c *Client) CopyTo(ctx context.Context, req agentproto.CopyToRequest, r io.Reader) (int64, error) {
	op := "copy to " + req.Path
	st, done, err := c.openStream(ctx, agentproto.OpCopyTo)
	if err != nil {
		return 0, err
	}
	defer done()
	if _, err := c.exchange(ctx, st, op, agentproto.Request{Op: agentproto.OpCopyTo, CopyTo: &req}); err != nil {
		return 0, err
	}
	if !req.IsDir && req.LinkTarget == "" && r != nil {
		buf := make([]byte, agentproto.MaxChunk)
		for {
			n, rerr := r.Read(buf)
			if n > 0 {
				if err := agentproto.WriteMsg(st, agentproto.MsgFileData, buf[:n]); err != nil {
					return 0, c.ctxOrLost(ctx, op, err)
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				// The guest discards its temporary file when the stream ends.
				return 0, fmt.Errorf("%s: read source: %w", op, rerr)
			}
		}
	}
	if err := agentproto.WriteMsg(st, agentproto.MsgFileEnd, nil); err != nil {
		return 0, c.ctxOrLost(ctx, op, err)
	}
	var res agentproto.CopyResult
	if err := agentproto.ReadJSON(st, agentproto.MsgCopyDone, &res); err != nil {
		return 0, c.ctxOrLost(ctx, op, err)
	}
	if res.Error != nil {
		return res.Bytes, fmt.Errorf("agent %s: %w", op, remoteError(res.Error))
	}
	return res.Bytes, nil
}
