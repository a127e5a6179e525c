package jsread

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestReadAgainWhileUnanswered: a read that gets no answer (as while a stream elects its leader) is asked again,
// each attempt within readAttempt, until one is answered; an answer, even an error such as "not found", ends it;
// and the caller's deadline still bounds the whole.
func TestReadAgainWhileUnanswered(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	attempts := 0
	began := time.Now()
	v, err := readAgain(ctx, func(actx context.Context) (int, error) {
		attempts++
		switch attempts {
		case 1, 2: // nobody answers: the attempt's own deadline ends it
			<-actx.Done()
			return 0, actx.Err()
		case 3:
			return 0, nats.ErrNoResponders
		case 4:
			return 0, &jetstream.APIError{Code: 503, ErrorCode: errCodeTemporarilyUnavailable, Description: "JetStream system temporarily unavailable"}
		}
		return 42, nil
	})
	took := time.Since(began)
	if err != nil || v != 42 || attempts != 5 {
		t.Fatalf("got %d, %v after %d attempts; want 42 after 5", v, err, attempts)
	}
	if took > 2*readAttempt+time.Second {
		t.Fatalf("took %s for two unanswered attempts of %s", took, readAttempt)
	}

	attempts = 0
	if _, err := readAgain(ctx, func(context.Context) (int, error) {
		attempts++
		return 0, jetstream.ErrMsgNotFound
	}); !errors.Is(err, jetstream.ErrMsgNotFound) || attempts != 1 {
		t.Fatalf("an answer that nothing is there: %v after %d attempts, want it at once", err, attempts)
	}

	short, cancelShort := context.WithTimeout(ctx, 2500*time.Millisecond)
	defer cancelShort()
	began = time.Now()
	if _, err := readAgain(short, func(actx context.Context) (int, error) {
		<-actx.Done()
		return 0, actx.Err()
	}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("never answered: %v, want the caller's deadline", err)
	}
	if took := time.Since(began); took < 2*time.Second || took > 4*time.Second {
		t.Fatalf("never answered: returned after %s, want the caller's 2.5 s", took)
	}
}
