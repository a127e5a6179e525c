package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzReadJSONLines feeds arbitrary bytes to the export reader and the chain check. Neither may
// panic, and whatever VerifyRecords accepts must chain when checked from first principles here.
func FuzzReadJSONLines(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ReadJSONLines(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := VerifyRecords(rs); err != nil {
			var be *BreakError
			if !errors.Is(err, ErrBroken) || !errors.As(err, &be) {
				t.Fatalf("VerifyRecords error is not a chain break: %v", err)
			}
			return
		}
		prev := ""
		for i, r := range rs {
			if r.Seq != uint64(i+1) {
				t.Fatalf("accepted seq %d at position %d", r.Seq, i)
			}
			if r.Prev != prev {
				t.Fatalf("accepted seq %d with prev %q, want %q", r.Seq, r.Prev, prev)
			}
			c := r
			c.Seq, c.Hash = 0, ""
			b, err := json.Marshal(c)
			if err != nil {
				t.Fatalf("accepted seq %d that does not encode: %v", r.Seq, err)
			}
			sum := sha256.Sum256(b)
			if h := hex.EncodeToString(sum[:]); h != r.Hash {
				t.Fatalf("accepted seq %d with hash %s, content hashes to %s", r.Seq, r.Hash, h)
			}
			if r.Kind == "" || r.Actor == "" {
				t.Fatalf("accepted seq %d without kind or actor", r.Seq)
			}
			prev = r.Hash
		}
	})
}

// The committed seeds must include a chain that verifies, or the fuzz target never reaches its
// checks on accepted input.
func TestFuzzSeedsCoverBothOutcomes(t *testing.T) {
	for name, wantOK := range map[string]bool{"valid_chain": true, "crlf": true, "edited_reason": false, "swapped": false, "missing_middle": false} {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzReadJSONLines", name))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.SplitN(string(raw), "\n", 3)
			if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
				t.Fatalf("not a fuzz corpus file: %q", raw)
			}
			data, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
			if err != nil {
				t.Fatal(err)
			}
			rs, err := ReadJSONLines(strings.NewReader(data))
			if err == nil {
				err = VerifyRecords(rs)
			}
			if wantOK && (err != nil || len(rs) != 3) {
				t.Fatalf("want a verified chain of 3, got %d records, %v", len(rs), err)
			}
			if !wantOK && !errors.Is(err, ErrBroken) {
				t.Fatalf("want ErrBroken, got %v", err)
			}
		})
	}
}
