package jsready_test

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/jsready"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// TestCheck: a cluster with a meta leader answers; a server left alone of three (its leadership lost with the
// quorum, about 10 s later) is reported as not answering, each check within about a second.
func TestCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := natsdtest.StartCluster(t, 3)
	c.MetaLeader()
	js := c.JetStream(0)
	if err := jsready.Check(ctx, js); err != nil {
		t.Fatalf("a cluster with a meta leader: %v", err)
	}
	c.Kill(1)
	c.Kill(2)
	killed := time.Now()
	for {
		began := time.Now()
		err := jsready.Check(ctx, js)
		if took := time.Since(began); took > jsready.Timeout+time.Second {
			t.Fatalf("a check took %s, want at most about %s", took, jsready.Timeout)
		}
		if err != nil {
			t.Logf("not answering %s after losing the quorum: %v", time.Since(killed).Round(time.Millisecond), err)
			return
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatal("one server of three still answers 30 s after the others went")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
