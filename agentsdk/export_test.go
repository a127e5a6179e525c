package agentsdk

import "net"

// WithRelayConnHook makes the agent pass every relay connection it opens through f, with the hello's mode
// ("send" or "recv"); tests use it to break those connections.
func WithRelayConnHook(f func(mode string, c net.Conn) net.Conn) Option {
	return func(o *options) { o.relayConn = f }
}
