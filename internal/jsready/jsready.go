// Package jsready asks a JetStream deployment, within a short deadline, whether it can answer API requests now.
//
// In a cluster only the meta leader answers a request to create a consumer, and while the servers elect a new one
// (4-9 s after the old one's death) the request is answered by nobody: the client's ordered consumers wait out a
// fixed 10 s for each creation, so a follower that lost its consumer at the wrong moment stood still for 10 s after
// a leader was there again. Asking first, with a deadline of a second, turns that wait into a quick failure that
// the caller retries.
package jsready

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Timeout bounds the question. A meta leader answers it in milliseconds.
const Timeout = time.Second

// Check returns nil if js's API answers within Timeout (the meta leader's, in a cluster), and an error saying
// it does not otherwise.
func Check(ctx context.Context, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("JetStream API not answering (a cluster electing its meta leader?): %w", err)
	}
	return nil
}
