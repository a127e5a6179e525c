package sdktest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// internalAnswer replaces the relay's answers on send connections with the answer the relay gives when an
// envelope is stored but its audit record is not written in time, for the first `fail` envelopes stored: each is
// in the session, and the sender is not told so. The answer to the envelope sent again (a duplicate) passes.
type internalAnswer struct {
	mu       sync.Mutex
	fail     int
	replaced []api.RelayAck // the answers the sender did not see
}

func (ia *internalAnswer) hook(mode string, c net.Conn) net.Conn {
	if mode != "send" {
		return c
	}
	return &answerConn{Conn: c, ia: ia, r: bufio.NewReader(c)}
}

// answerConn reads the relay's answers line by line and hands them on, or their replacement.
type answerConn struct {
	net.Conn
	ia      *internalAnswer
	r       *bufio.Reader
	pending []byte
}

func (c *answerConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		line, err := c.r.ReadBytes('\n')
		if len(line) == 0 {
			return 0, err
		}
		c.pending = c.ia.answer(line)
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (ia *internalAnswer) answer(line []byte) []byte {
	ia.mu.Lock()
	defer ia.mu.Unlock()
	var ack api.RelayAck
	if ia.fail == 0 || json.Unmarshal(bytes.TrimSpace(line), &ack) != nil || !ack.OK || ack.Duplicate {
		return line
	}
	ia.fail--
	ia.replaced = append(ia.replaced, ack)
	b, _ := json.Marshal(api.RelayAck{ID: ack.ID, Code: api.CodeInternal,
		Error: "the envelope is stored but its audit record is not written yet; send it again with the same id"})
	return append(b, '\n')
}

// TestSendRetriesInternalAnswer hides the relay's acknowledgement of two envelopes behind the internal answer a
// relay gives while a cluster fails over (the envelope stored, its record late). Send sends each again by itself
// and returns the sequence number the relay gave the original; the provider receives each envelope once.
func TestSendRetriesInternalAnswer(t *testing.T) {
	w := newPricingWorld(t, defaultTerms())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ia := &internalAnswer{fail: 2}
	buyer, err := agentsdk.Connect(ctx, w.buyer.Identity(), agentsdk.WithRelayConnHook(ia.hook))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { buyer.Close() })
	sess, err := buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	prov, err := w.quoter.Session(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		seq, err := sess.Send(sctx, "quote.request", []byte(`{"n":1}`))
		scancel()
		if err != nil {
			t.Fatalf("send %d: %v", n, err)
		}
		if seq != uint64(n) {
			t.Fatalf("send %d: sequence %d", n, seq)
		}
	}
	ia.mu.Lock()
	hidden := len(ia.replaced)
	for i, ack := range ia.replaced {
		if ack.Seq != uint64(i+1) {
			t.Errorf("hidden answer %d gave sequence %d", i, ack.Seq)
		}
	}
	ia.mu.Unlock()
	if hidden != 2 {
		t.Fatalf("%d answers hidden, want 2", hidden)
	}
	for n := 1; n <= 3; n++ {
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		env, err := prov.Receive(rctx)
		rcancel()
		if err != nil {
			t.Fatalf("receive %d: %v", n, err)
		}
		if env.Header.Seq != uint64(n) {
			t.Fatalf("received sequence %d, want %d", env.Header.Seq, n)
		}
	}
	rctx, rcancel := context.WithTimeout(ctx, time.Second)
	defer rcancel()
	if env, err := prov.Receive(rctx); err == nil {
		t.Fatalf("a fourth envelope was delivered: %+v", env.Header)
	}
}
