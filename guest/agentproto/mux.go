package agentproto

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/yamux"
)

// MuxConfig is the yamux configuration both ends use. keepAlive > 0 makes
// this end ping the other every keepAlive and drop the session when a ping
// is not answered within WriteTimeout (the host does; the guest relies on
// the link: end of stream on the port, or a new epoch).
func MuxConfig(log *slog.Logger, keepAlive time.Duration) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = keepAlive > 0
	if keepAlive > 0 {
		c.KeepAliveInterval = keepAlive
	}
	// A write waits for the link; under TCG on a loaded host a guest can
	// stall for seconds. The session is dropped only after this long.
	c.ConnectionWriteTimeout = WriteTimeout
	c.StreamOpenTimeout = WriteTimeout
	// Half-closed streams the peer never finishes are reaped after this.
	c.StreamCloseTimeout = time.Minute
	c.LogOutput = nil
	c.Logger = muxLogger{log}
	return c
}

// WriteTimeout bounds one multiplexer write and one keepalive round trip.
const WriteTimeout = 30 * time.Second

type muxLogger struct{ log *slog.Logger }

func (l muxLogger) Print(v ...any)                 { l.log.Debug(fmt.Sprint(v...)) }
func (l muxLogger) Printf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l muxLogger) Println(v ...any)               { l.log.Debug(fmt.Sprint(v...)) }
