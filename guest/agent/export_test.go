package agent

// CloseWithoutBye drops the connection the way a dying daemon does: the
// socket closes, no Bye frame is sent.
func (c *Client) CloseWithoutBye() {
	c.shutdown(ErrConnectionLost)
	c.wg.Wait()
}
