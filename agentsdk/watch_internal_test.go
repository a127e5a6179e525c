package agentsdk

import "testing"

// TestListenersDownSkipsAFirstBind checks what the watchdog counts as a hosted service that went down: a listener
// whose first bind (inside ListenContext) has not returned is not one, or a bind that takes longer than the
// watchdog's two looks would make the agent reconnect and bind the same listener a second time, in a new overlay
// session, while the first bind still runs. Once the first bind has returned without hosting the service, the
// listener counts as down.
func TestListenersDownSkipsAFirstBind(t *testing.T) {
	a := &Agent{listeners: map[*listener]struct{}{}}
	l := &listener{agent: a, service: "svc", pending: true}
	a.listeners[l] = struct{}{}
	if a.listenersDown() {
		t.Fatal("a listener whose first bind is still running counts as down")
	}
	l.mu.Lock()
	l.pending = false
	l.mu.Unlock()
	if !a.listenersDown() {
		t.Fatal("a listener whose first bind returned without hosting the service does not count as down")
	}
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if a.listenersDown() {
		t.Fatal("a closed listener counts as down")
	}
}
