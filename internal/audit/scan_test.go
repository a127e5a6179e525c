package audit

import (
	"testing"
)

// TestScanOpensAgainWhenItsConsumerIsLost deletes the scan's consumer on the server while the scan reads (as a
// server's death or a missed heartbeat would lose it): the scan opens another after the last record it read and
// passes every record to its caller once, in order.
func TestScanOpensAgainWhenItsConsumerIsLost(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	const n = 1200 // more than one pull of the client's
	appendN(t, ctx, l, n)
	var seqs []uint64
	deleted := 0
	last, err := l.Scan(ctx, 0, func(r Record) error {
		seqs = append(seqs, r.Seq)
		if len(seqs) == 10 || len(seqs) == 700 {
			for name := range l.stream.ListConsumers(ctx).Info() {
				if err := l.stream.DeleteConsumer(ctx, name.Name); err != nil {
					t.Fatalf("delete consumer %s: %v", name.Name, err)
				}
				deleted++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	if deleted != 2 {
		t.Fatalf("deleted %d consumers, want the scan's, twice", deleted)
	}
	if last != n || len(seqs) != n {
		t.Fatalf("scan returned %d after %d records, want %d", last, len(seqs), n)
	}
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("record %d has sequence %d", i+1, seq)
		}
	}
}
