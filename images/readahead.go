package images

import (
	"io"
	"sync"
)

// readAhead reads r in a goroutine into a few 1 MiB chunks ahead of the
// consumer, so fetching, hashing and decompressing a layer overlaps with
// writing its files. Close stops the goroutine and waits for it; the
// goroutine is owned by whoever called readAhead.
type readAhead struct {
	chunks chan []byte
	free   chan []byte
	stop   chan struct{}
	wg     sync.WaitGroup
	cur    []byte // unread part of held
	held   []byte // the chunk being read, returned to free when used up
	err    error  // the producer's final error, valid after chunks closes
	once   sync.Once
}

func newReadAhead(r io.Reader, depth int) *readAhead {
	ra := &readAhead{
		chunks: make(chan []byte, depth),
		free:   make(chan []byte, depth+2),
		stop:   make(chan struct{}),
	}
	for i := 0; i < depth+2; i++ {
		ra.free <- make([]byte, 1<<20)
	}
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		defer close(ra.chunks)
		for {
			var buf []byte
			select {
			case buf = <-ra.free:
			case <-ra.stop:
				return
			}
			n, err := io.ReadFull(r, buf)
			if n == 0 {
				ra.free <- buf
			} else {
				select {
				case ra.chunks <- buf[:n]:
				case <-ra.stop:
					return
				}
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			if err != nil {
				ra.err = err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.held != nil {
			ra.free <- ra.held[:cap(ra.held)]
			ra.held = nil
		}
		c, ok := <-ra.chunks
		if !ok {
			return 0, ra.err
		}
		ra.cur, ra.held = c, c
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Close stops the producer and waits for it to exit.
func (ra *readAhead) Close() error {
	ra.once.Do(func() { close(ra.stop) })
	ra.wg.Wait()
	return nil
}
