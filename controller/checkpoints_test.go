package controller

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd"
)

const testControllerID = "spiffe://test.local/controller/api/controller"

func TestCheckpointKeyKeptInDataDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.key")
	key, err := loadSeedKey(path, "UMBRA AUDIT CHECKPOINT SEED")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := loadSeedKey(path, "UMBRA AUDIT CHECKPOINT SEED")
	if err != nil || !again.Equal(key) {
		t.Fatalf("second start loaded another key (%v)", err)
	}
	if _, err := loadSeedKey(path, "UMBRA TOKEN SIGNING SEED"); err == nil {
		t.Fatal("a checkpoint key was accepted as a token key")
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadSeedKey(path, "UMBRA AUDIT CHECKPOINT SEED"); err == nil || !strings.Contains(err.Error(), "restore it") {
		t.Fatalf("damaged key file: %v", err)
	}
}

// trailServer is a Server with only what the audit checkpoints need, on an embedded NATS whose store is dir.
type trailServer struct {
	*Server
	ns *natsd.Server
}

func openTrail(t *testing.T, dir string, key ed25519.PrivateKey) *trailServer {
	t.Helper()
	ns, err := natsd.Start(natsd.Config{StoreDir: dir, SyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	ts := &trailServer{ns: ns}
	t.Cleanup(ts.close)
	nc, err := ns.Connect("checkpoint-test")
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := audit.Open(ctx, js, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Config{DataDir: dir}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = &Server{cfg: cfg, log: cfg.Logger, auditKey: key, gov: &governance{audit: l},
		controllerID: spiffeid.RequireFromString(testControllerID)}
	return ts
}

func (ts *trailServer) close() {
	if ts.ns != nil {
		ts.ns.Shutdown()
		ts.ns = nil
	}
}

func (ts *trailServer) add(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	for i := range n {
		if _, err := ts.gov.audit.Append(ctx, audit.Record{Kind: "org.created", Actor: testControllerID, Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// copyTree copies the regular files and directories under from to to.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestKeptCheckpointDetectsRestoredSnapshot restores an older copy of the JetStream store under a running
// trail: the older chain is intact and its checkpoints verify, so only the checkpoint kept from a later
// verification shows that records are gone, and still does once the restored chain has grown past it.
func TestKeptCheckpointDetectsRestoredSnapshot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	store, snapshot := filepath.Join(dir, "jetstream"), filepath.Join(dir, "snapshot")
	key, err := loadSeedKey(filepath.Join(dir, "audit.key"), "UMBRA AUDIT CHECKPOINT SEED")
	if err != nil {
		t.Fatal(err)
	}

	ts := openTrail(t, store, key)
	ts.add(t, ctx, 3)
	if err := ts.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	ts.close()
	copyTree(t, store, snapshot)

	ts = openTrail(t, store, key)
	ts.add(t, ctx, 3)
	if err := ts.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := ts.verifyAudit(ctx, "")
	if err != nil || !rep.OK || rep.Checkpoints != 2 || rep.LastCheckpoint == nil || rep.LastCheckpoint.Seq != 7 {
		t.Fatalf("before the rollback: %+v %v", rep, err)
	}
	kept := fmt.Sprintf("%d:%s", rep.LastCheckpoint.Seq, rep.LastCheckpoint.Hash)
	ts.close()

	if err := os.RemoveAll(store); err != nil {
		t.Fatal(err)
	}
	copyTree(t, snapshot, store)
	ts = openTrail(t, store, key)
	rep, err = ts.verifyAudit(ctx, "")
	if err != nil || !rep.OK || rep.LastSeq != 4 {
		t.Fatalf("the restored chain should verify on its own (that is the hole anchors close): %+v %v", rep, err)
	}
	rep, err = ts.verifyAudit(ctx, kept)
	if err != nil || rep.OK || !strings.Contains(rep.Error, "truncated or rolled back") {
		t.Fatalf("restored snapshot with the kept checkpoint %s: %+v %v", kept, rep, err)
	}

	// The chain continues from the snapshot, past the kept sequence: the record there is another one.
	ts.add(t, ctx, 5)
	if err := ts.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = ts.verifyAudit(ctx, kept)
	if err != nil || rep.OK || !strings.Contains(rep.Error, "rewritten or rolled back") {
		t.Fatalf("regrown chain with the kept checkpoint %s: %+v %v", kept, rep, err)
	}
	if _, err := ts.verifyAudit(ctx, "7:nothex"); err == nil {
		t.Fatal("a malformed kept checkpoint was accepted")
	}
}

func TestCheckpointEveryIntervalOnlyWhenNew(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	key, err := loadSeedKey(filepath.Join(dir, "audit.key"), "UMBRA AUDIT CHECKPOINT SEED")
	if err != nil {
		t.Fatal(err)
	}
	ts := openTrail(t, filepath.Join(dir, "jetstream"), key)
	ts.add(t, ctx, 2)
	loopCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts.checkpointEvery(loopCtx, 20*time.Millisecond)
	}()
	waitCheckpoints := func(want int) {
		t.Helper()
		for {
			rep, err := ts.verifyAudit(ctx, "")
			if err != nil || !rep.OK {
				t.Fatalf("verify: %+v %v", rep, err)
			}
			if rep.Checkpoints == want && rep.LastSeq == rep.LastCheckpoint.Seq+1 {
				return
			}
			if rep.Checkpoints > want {
				t.Fatalf("%d checkpoints, want %d: one was signed with nothing new to cover", rep.Checkpoints, want)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no checkpoint %d: %+v", want, rep)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	waitCheckpoints(1)
	time.Sleep(100 * time.Millisecond) // five idle intervals
	waitCheckpoints(1)
	ts.add(t, ctx, 1)
	waitCheckpoints(2)
	stop()
	<-done

	var buf bytes.Buffer
	if _, err := ts.gov.audit.Export(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	rs, err := audit.ReadJSONLines(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if r := rs[len(rs)-1]; r.Kind != audit.KindCheckpoint || r.Actor != testControllerID {
		t.Fatalf("last record %+v, want a checkpoint by the controller", r)
	}
}
