package controller

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

func TestClusterConfig(t *testing.T) {
	cluster := func(c Config) Config {
		c.NATSClusterListen, c.NATSRoutes = "127.0.0.1:7422", []string{"127.0.0.1:7423"}
		return c
	}
	for name, tc := range map[string]struct {
		cfg          Config
		wantReplicas int
		wantErr      string
	}{
		"default":            {cfg: Config{}, wantReplicas: 1},
		"cluster R3":         {cfg: cluster(Config{Replicas: 3}), wantReplicas: 3},
		"R3 without cluster": {cfg: Config{Replicas: 3}, wantErr: "need a NATS cluster listener"},
		"routes only":        {cfg: Config{NATSRoutes: []string{"127.0.0.1:1"}}, wantErr: "need a NATS cluster listener"},
		"R6":                 {cfg: cluster(Config{Replicas: 6}), wantErr: "Replicas 6: want 1 to 5"},
		"negative":           {cfg: cluster(Config{Replicas: -1}), wantErr: "Replicas -1"},
		"no routes":          {cfg: Config{NATSClusterListen: "127.0.0.1:7422"}, wantErr: "at least one other controller"},
		"bad route":          {cfg: Config{NATSClusterListen: "127.0.0.1:7422", NATSRoutes: []string{"nohost"}}, wantErr: `route "nohost"`},
		"bad listen":         {cfg: Config{NATSClusterListen: "7422", NATSRoutes: []string{"127.0.0.1:1"}}, wantErr: "want HOST:PORT"},
	} {
		t.Run(name, func(t *testing.T) {
			tc.cfg.DataDir = "x"
			got, err := tc.cfg.withDefaults()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Replicas != tc.wantReplicas {
				t.Fatalf("replicas %d, err %v; want %d", got.Replicas, err, tc.wantReplicas)
			}
		})
	}
}

// TestEveryStoreReplicated opens the controller's stores on a three-server cluster with Replicas 3: every stream
// and bucket it creates has three replicas.
func TestEveryStoreReplicated(t *testing.T) {
	c := natsdtest.StartCluster(t, 3)
	cfg, err := Config{DataDir: t.TempDir(), NATSClusterListen: "127.0.0.1:7422", NATSRoutes: []string{"127.0.0.1:7423"},
		Replicas: 3, AuditMaxBytes: 64 << 20, EnvelopeMaxBytes: 64 << 20}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	njs := c.JetStream(0)
	js := replicated{JetStream: njs, n: cfg.Replicas}
	if _, err := openIdentityStore(ctx, js); err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString("umbra.test"), "umbra", "controller", "api")
	if _, err := openGovernance(ctx, js, slog.New(slog.DiscardHandler), id.String(), cfg); err != nil {
		t.Fatal(err)
	}
	names := njs.StreamNames(ctx)
	n := 0
	for name := range names.Name() {
		s, err := njs.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3", name, r)
		}
		n++
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d streams and buckets, all R3", n)
	if n < 12 {
		t.Fatalf("only %d streams and buckets", n)
	}
}

// TestUnansweredCreates: a replicated create is sent again when JetStream gave no answer, was not ready, or could
// not place the store yet (at a cluster's first start); any other refusal is final.
func TestUnansweredCreates(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{nats.ErrTimeout, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use with a different configuration"}, false},
		{&jetstream.APIError{Code: 500, ErrorCode: 10023, Description: "insufficient resources"}, false},
		{errors.New("nats: connection closed"), false},
	} {
		if got := unanswered(c.err); got != c.want {
			t.Errorf("unanswered(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// leaderlessBucket answers every operation that no stream took it, `leaderless` times, then as the bucket would.
type leaderlessBucket struct {
	jetstream.KeyValue
	leaderless int
	calls      int
	err        error
}

func (b *leaderlessBucket) answer() error {
	b.calls++
	if b.calls <= b.leaderless {
		return b.err
	}
	return nil
}

func (b *leaderlessBucket) Put(context.Context, string, []byte) (uint64, error) { return 7, b.answer() }
func (b *leaderlessBucket) Create(context.Context, string, []byte, ...jetstream.KVCreateOpt) (uint64, error) {
	return 8, b.answer()
}
func (b *leaderlessBucket) Delete(context.Context, string, ...jetstream.KVDeleteOpt) error {
	return b.answer()
}

// TestLeaderlessBucket: a replicated bucket's operation answered that no stream took it (its leader died and
// no replica leads it yet) is sent again until one does, within leaderlessWait; any other error is returned at
// once, and so is a single server's.
func TestLeaderlessBucket(t *testing.T) {
	ctx := t.Context()
	b := &leaderlessBucket{leaderless: 3, err: jetstream.ErrNoStreamResponse}
	kv, err := replicated{n: 3}.bucket(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rev, err := kv.Put(ctx, "k", nil); err != nil || rev != 7 || b.calls != 4 {
		t.Fatalf("put: revision %d, %v after %d calls; want 7 after 4", rev, err, b.calls)
	}
	b.calls, b.err = 0, nats.ErrNoResponders
	if rev, err := kv.Create(ctx, "k", nil); err != nil || rev != 8 || b.calls != 4 {
		t.Fatalf("create: revision %d, %v after %d calls; want 8 after 4", rev, err, b.calls)
	}
	b.calls, b.err = 0, &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}
	if err := kv.Delete(ctx, "k"); err == nil || b.calls != 1 {
		t.Fatalf("delete refused by the bucket: %v after %d calls; want the refusal after 1", err, b.calls)
	}
	b.calls, b.err = 0, jetstream.ErrNoStreamResponse
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := kv.Put(cctx, "k", nil); !errors.Is(err, jetstream.ErrNoStreamResponse) || b.calls != 1 {
		t.Fatalf("put with its context ended: %v after %d calls; want no stream's answer after 1", err, b.calls)
	}
	single, _ := replicated{n: 1}.bucket(b, nil)
	b.calls = 0
	if _, err := single.Put(ctx, "k", nil); !errors.Is(err, jetstream.ErrNoStreamResponse) || b.calls != 1 {
		t.Fatalf("single server: %v after %d calls; want no stream's answer after 1", err, b.calls)
	}
}

// TestWrongSequence: a failed compare-and-set is a conflict (tried again by the tables), on one server and on a
// replicated stream, which answers it with an error code of its own.
func TestWrongSequence(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence"}, true},
		{&jetstream.APIError{Code: 500, ErrorCode: 10023}, false},
		{jetstream.ErrNoStreamResponse, false},
	} {
		if got := isWrongSequence(c.err); got != c.want {
			t.Errorf("isWrongSequence(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
