package envstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestManyReceivers: the stream holds more cursors than the server's default of 1,000 consumers per stream. Past
// that default, delivery of every new session would stop (each session has a cursor per recipient).
func TestManyReceivers(t *testing.T) {
	testlimit.Start(t, 3*time.Minute)
	srv := startServerSync(t, t.TempDir(), false)
	defer srv.Shutdown()
	s := open(t, connect(t, srv), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range 1010 {
		r, err := s.Receiver(ctx, fmt.Sprintf("ses-%d", i), recipientA)
		if err != nil {
			t.Fatalf("receiver %d: %v", i, err)
		}
		r.Close()
	}
}
