package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

const controllerActor = "spiffe://umbra.test/controller/api/controller"

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func pubOf(key ed25519.PrivateKey) ed25519.PublicKey { return key.Public().(ed25519.PublicKey) }

// chainUp appends r to rs as Append would: next sequence, linked to the last record.
func chainUp(t testing.TB, rs []Record, r Record) []Record {
	t.Helper()
	if err := normalize(&r, time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	r.Seq, r.Prev = uint64(len(rs)+1), ""
	if len(rs) > 0 {
		r.Prev = rs[len(rs)-1].Hash
	}
	h, err := hashOf(r)
	if err != nil {
		t.Fatal(err)
	}
	r.Hash = h
	return append(rs, r)
}

// checkpointRecord is the record AppendCheckpoint would append after rs.
func checkpointRecord(t testing.TB, key ed25519.PrivateKey, rs []Record) Record {
	t.Helper()
	last := rs[len(rs)-1]
	c := SignCheckpoint(key, last.Seq, last.Hash, time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC))
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return Record{Time: c.Time, Kind: KindCheckpoint, Actor: controllerActor, Data: data}
}

// anchoredChain is n ordinary records with a checkpoint after every `every` of them.
func anchoredChain(t testing.TB, key ed25519.PrivateKey, n, every int) []Record {
	var rs []Record
	for i := range n {
		rs = chainUp(t, rs, record(i, fmt.Sprintf("ses_%d", i%2)))
		if (i+1)%every == 0 {
			rs = chainUp(t, rs, checkpointRecord(t, key, rs))
		}
	}
	return rs
}

// rechain recomputes every link and hash of rs, as someone rewriting an export would.
func rechain(t testing.TB, rs []Record) []Record {
	var out []Record
	for _, r := range rs {
		r.Hash = ""
		out = chainUp(t, out, r)
	}
	return out
}

func TestCheckpointMessageIsFixed(t *testing.T) {
	h := "ab" + string(bytes.Repeat([]byte("0"), 62))
	got := string(CheckpointMessage(42, h, time.Date(2030, 1, 2, 3, 4, 5, 600000000, time.FixedZone("x", 3600)), "0011223344556677"))
	want := "umbra-audit-checkpoint/v1\n42\n" + h + "\n2030-01-02T02:04:05.6Z\n0011223344556677"
	if got != want {
		t.Fatalf("message\n%q\nwant\n%q", got, want)
	}
}

func TestCheckpointSignatureCoversEveryField(t *testing.T) {
	key := newKey(t)
	rs := sampleChain(t, 2)
	good := SignCheckpoint(key, 2, rs[1].Hash, time.Now())
	if err := good.Verify(pubOf(key)); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	tests := []struct {
		name   string
		change func(c *Checkpoint)
		pub    ed25519.PublicKey
	}{
		{"seq", func(c *Checkpoint) { c.Seq++ }, nil},
		{"hash", func(c *Checkpoint) { c.Hash = rs[0].Hash }, nil},
		{"time", func(c *Checkpoint) { c.Time = c.Time.Add(time.Microsecond) }, nil},
		{"key id", func(c *Checkpoint) { c.KeyID = KeyID(pubOf(newKey(t))) }, nil},
		{"signature", func(c *Checkpoint) { c.Sig = slices.Clone(c.Sig); c.Sig[0] ^= 1 }, nil},
		{"another key", func(*Checkpoint) {}, pubOf(newKey(t))},
		{"short key", func(*Checkpoint) {}, ed25519.PublicKey{1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.change(&c)
			pub := tt.pub
			if pub == nil {
				pub = pubOf(key)
			}
			if err := c.Verify(pub); !errors.Is(err, ErrCheckpoint) {
				t.Fatalf("got %v, want ErrCheckpoint", err)
			}
		})
	}
}

func TestVerifyAnchored(t *testing.T) {
	key := newKey(t)
	pub := pubOf(key)
	good := anchoredChain(t, key, 10, 4) // checkpoints at seq 5 (covers 4) and 10 (covers 9)
	if len(good) != 12 {
		t.Fatalf("fixture has %d records", len(good))
	}
	rep, err := VerifyAnchored(good, pub, AnchorOptions{RequireCheckpoint: true})
	if err != nil {
		t.Fatalf("good chain: %v", err)
	}
	if rep.Records != 12 || rep.Checkpoints != 2 || rep.Last.Seq != 9 || rep.Last.Hash != good[8].Hash || rep.LastAt != 10 || rep.Unanchored() != 3 {
		t.Fatalf("report %+v", rep)
	}
	kept := Anchor{Seq: rep.Last.Seq, Hash: rep.Last.Hash}
	if _, err := VerifyAnchored(good, pub, AnchorOptions{After: []Anchor{kept}}); err != nil {
		t.Fatalf("good chain after %s: %v", kept, err)
	}

	edited := slices.Clone(good)
	edited[2].Reason = "edited"
	withoutCheckpoints := slices.DeleteFunc(slices.Clone(good), func(r Record) bool { return r.Kind == KindCheckpoint })
	forged := func() []Record { // a fresh chain whose checkpoints are signed with someone else's key
		other := newKey(t)
		var out []Record
		for _, r := range withoutCheckpoints {
			r.Hash = ""
			out = chainUp(t, out, r)
			if len(out)%5 == 4 {
				out = chainUp(t, out, checkpointRecord(t, other, out))
			}
		}
		return out
	}()
	badSig := slices.Clone(good)
	c, err := ParseCheckpoint(badSig[4])
	if err != nil {
		t.Fatal(err)
	}
	c.Sig = slices.Clone(c.Sig)
	c.Sig[10] ^= 0x40
	badSig[4].Data, _ = json.Marshal(c)
	badSig = rechain(t, badSig)
	future := slices.Clone(good[:5])
	c, _ = ParseCheckpoint(future[4])
	fc := SignCheckpoint(key, 5, good[4].Hash, c.Time) // claims to cover itself
	future[4].Data, _ = json.Marshal(fc)
	future = rechain(t, future)

	tests := []struct {
		name string
		rs   []Record
		opts AnchorOptions
		want error
	}{
		{"edited record", edited, AnchorOptions{}, ErrBroken},
		{"rewritten as a whole, checkpoints kept", rechain(t, edited), AnchorOptions{}, ErrCheckpoint},
		{"rewritten with checkpoints signed by another key", forged, AnchorOptions{}, ErrCheckpoint},
		{"checkpoints stripped, checkpoint required", rechain(t, withoutCheckpoints), AnchorOptions{RequireCheckpoint: true}, ErrUnanchored},
		{"checkpoints stripped, kept checkpoint", rechain(t, withoutCheckpoints), AnchorOptions{After: []Anchor{kept}}, ErrAnchor},
		{"truncated before the kept checkpoint", good[:6], AnchorOptions{After: []Anchor{kept}}, ErrAnchor},
		{"tampered signature", badSig, AnchorOptions{}, ErrCheckpoint},
		{"checkpoint covers itself", future, AnchorOptions{}, ErrCheckpoint},
		{"kept checkpoint with another hash", good, AnchorOptions{After: []Anchor{{Seq: 9, Hash: good[7].Hash}}}, ErrAnchor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := VerifyRecords(tt.rs); tt.want != ErrBroken && err != nil {
				t.Fatalf("fixture is not a valid chain: %v", err)
			}
			_, err := VerifyAnchored(tt.rs, pub, tt.opts)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}

	// Without a required checkpoint, a chain with none verifies and says so.
	rep, err = VerifyAnchored(rechain(t, withoutCheckpoints), pub, AnchorOptions{})
	if err != nil || rep.Checkpoints != 0 || rep.Unanchored() != uint64(len(withoutCheckpoints)) {
		t.Fatalf("unanchored chain: %+v %v", rep, err)
	}
}

func TestParseAnchor(t *testing.T) {
	h := sampleChain(t, 1)[0].Hash
	a, err := ParseAnchor("17:" + h)
	if err != nil || a != (Anchor{Seq: 17, Hash: h}) || a.String() != "17:"+h {
		t.Fatalf("ParseAnchor: %+v %v", a, err)
	}
	for _, s := range []string{"", "17", "17:", ":" + h, "0:" + h, "-1:" + h, "x:" + h, "17:" + h[:63], "17:" + h + "0"} {
		if _, err := ParseAnchor(s); err == nil {
			t.Errorf("ParseAnchor(%q) accepted", s)
		}
	}
}

func TestPublicKeyPEMRoundTrip(t *testing.T) {
	pub := pubOf(newKey(t))
	b, err := PublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePublicKeyPEM(b)
	if err != nil || !got.Equal(pub) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := ParsePublicKeyPEM([]byte("not a key")); err == nil {
		t.Fatal("garbage accepted as a key")
	}
}

func TestAppendCheckpoint(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	key := newKey(t)
	if _, ok, err := l.AppendCheckpoint(ctx, controllerActor, key); ok || err != nil {
		t.Fatalf("checkpoint of an empty chain: %v %v", ok, err)
	}
	recs := appendN(t, ctx, l, 3)
	cp, ok, err := l.AppendCheckpoint(ctx, controllerActor, key)
	if err != nil || !ok {
		t.Fatalf("checkpoint: %v %v", ok, err)
	}
	c, err := ParseCheckpoint(cp)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Seq != 4 || cp.Prev != recs[2].Hash || c.Seq != 3 || c.Hash != recs[2].Hash || !c.Time.Equal(cp.Time) {
		t.Fatalf("checkpoint record %+v covers %+v", cp, c)
	}
	if _, ok, err := l.AppendCheckpoint(ctx, controllerActor, key); ok || err != nil {
		t.Fatalf("second checkpoint with nothing new: %v %v", ok, err)
	}
	if _, err := l.AppendBatch(ctx, []Record{record(3, "ses_a"), record(4, "ses_b")}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := l.AppendCheckpoint(ctx, controllerActor, key); !ok || err != nil {
		t.Fatalf("checkpoint after a batch: %v %v", ok, err)
	}

	rep, err := l.VerifyAnchored(ctx, pubOf(key), AnchorOptions{RequireCheckpoint: true, After: []Anchor{{Seq: 3, Hash: recs[2].Hash}}})
	if err != nil || rep.Checkpoints != 2 || rep.Last.Seq != 6 || rep.LastAt != 7 || rep.Records != 7 {
		t.Fatalf("online: %+v %v", rep, err)
	}
	if _, err := l.VerifyAnchored(ctx, pubOf(newKey(t)), AnchorOptions{}); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("online with another key: %v", err)
	}
	if _, err := l.VerifyAnchored(ctx, pubOf(key), AnchorOptions{After: []Anchor{{Seq: 8, Hash: recs[2].Hash}}}); !errors.Is(err, ErrAnchor) {
		t.Fatalf("online with an anchor past the end: %v", err)
	}

	var buf bytes.Buffer
	if _, err := l.Export(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	rs, err := ReadJSONLines(&buf)
	if err != nil {
		t.Fatal(err)
	}
	off, err := VerifyAnchored(rs, pubOf(key), AnchorOptions{RequireCheckpoint: true})
	if err != nil || off.Last.Seq != rep.Last.Seq || off.Last.Hash != rep.Last.Hash || off.LastAt != rep.LastAt {
		t.Fatalf("offline: %+v %v, online %+v", off, err, rep)
	}
}
