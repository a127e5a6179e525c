package controller

import (
	"context"
	"errors"
	"fmt"
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

// TestConcurrentOpensAnsweredAtOnce: the members of a cluster that start together open the same stores at once.
// Each of those opens is answered on its first attempt: every call here gets less time than one attempt
// (createAttemptTimeout), so a request left unanswered fails it. A store that exists with another configuration
// is updated.
func TestConcurrentOpensAnsweredAtOnce(t *testing.T) {
	c := natsdtest.StartCluster(t, 3)
	members := make([]replicated, 3)
	for i := range members {
		members[i] = replicated{JetStream: c.JetStream(i), n: 3}
	}
	const within = createAttemptTimeout - time.Second
	atOnce := func(what string, open func(ctx context.Context, r replicated) error) {
		t.Helper()
		errs := make(chan error, len(members))
		for _, r := range members {
			go func() {
				ctx, cancel := context.WithTimeout(t.Context(), within)
				defer cancel()
				errs <- open(ctx, r)
			}()
		}
		for range members {
			if err := <-errs; err != nil {
				t.Fatalf("%s, opened by three members at once: %v", what, err)
			}
		}
	}
	for i := range 3 {
		bucket := fmt.Sprintf("opened_%d", i)
		atOnce("bucket "+bucket, func(ctx context.Context, r replicated) error {
			_, err := r.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 1, Storage: jetstream.FileStorage})
			return err
		})
		stream := fmt.Sprintf("OPENED_%d", i)
		atOnce("stream "+stream, func(ctx context.Context, r replicated) error {
			_, err := r.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{stream + ".>"}, Storage: jetstream.FileStorage})
			return err
		})
	}

	// Opened again with another configuration, as a newer controller may: updated.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	kv, err := members[1].CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "opened_0", History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kv.Status(ctx); err != nil || st.History() != 5 {
		t.Fatalf("bucket opened again with history 5: status %v, %v", st, err)
	}
	s, err := members[2].CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "OPENED_0", Subjects: []string{"OPENED_0.>"},
		Storage: jetstream.FileStorage, MaxMsgs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxMsgs; got != 1000 {
		t.Fatalf("stream opened again with MaxMsgs 1000 has %d", got)
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
