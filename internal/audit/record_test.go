package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const testActor = "spiffe://umbra.test/agent/alpha"

// sealChain fills Seq, Prev and Hash of rs so that they form a valid chain, as Append would.
func sealChain(t testing.TB, rs []Record) []Record {
	t.Helper()
	prev := ""
	for i := range rs {
		if err := normalize(&rs[i], time.Date(2030, 1, 2, 3, 4, 5, 6789, time.UTC)); err != nil {
			t.Fatal(err)
		}
		rs[i].Seq, rs[i].Prev = uint64(i+1), prev
		h, err := hashOf(rs[i])
		if err != nil {
			t.Fatal(err)
		}
		rs[i].Hash, prev = h, h
	}
	return rs
}

func sampleChain(t testing.TB, n int) []Record {
	rs := make([]Record, n)
	for i := range rs {
		rs[i] = Record{
			Kind:     "envelope.accepted",
			Actor:    testActor,
			Session:  fmt.Sprintf("ses_%d", i%3),
			Decision: DecisionAllow,
			Reason:   fmt.Sprintf("record %d", i),
			Data:     json.RawMessage(fmt.Sprintf(`{ "n": %d }`, i)),
		}
	}
	return sealChain(t, rs)
}

func TestCanonicalEncodingIsStable(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"spaced", `{ "a" : 1 ,  "b" : [ 1, 2 ] }`},
		{"html", `{"q":"<script>&amp;</script>"}`},
		{"unicode", `{"s":"été \u2028 ✓","e":"\u00e9"}`},
		{"nested", "{\n\t\"x\": {\"y\": null}\n}"},
		{"number", `1e3`},
		{"null", `null`},
		{"empty", ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Record{
				Time:       time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.FixedZone("X", 3600)),
				Kind:       "discover",
				Actor:      testActor,
				Reason:     "a <reason> & more",
				Data:       json.RawMessage(tt.data),
				Diagnostic: json.RawMessage(tt.data),
			}
			if err := normalize(&r, time.Now()); err != nil {
				t.Fatal(err)
			}
			if r.Time.Location() != time.UTC || r.Time.Nanosecond()%1000 != 0 {
				t.Fatalf("time not normalised: %v", r.Time)
			}
			h1, err := hashOf(r)
			if err != nil {
				t.Fatal(err)
			}
			r.Hash = h1
			r.Seq = 7
			// Round trip through the export encoding, twice.
			var buf bytes.Buffer
			if err := writeJSONLine(&buf, r); err != nil {
				t.Fatal(err)
			}
			first := buf.String()
			back, err := ReadJSONLines(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if len(back) != 1 {
				t.Fatalf("got %d records", len(back))
			}
			h2, err := hashOf(back[0])
			if err != nil {
				t.Fatal(err)
			}
			if h2 != h1 {
				t.Fatalf("hash changed after round trip: %s != %s", h2, h1)
			}
			buf.Reset()
			if err := writeJSONLine(&buf, back[0]); err != nil {
				t.Fatal(err)
			}
			if buf.String() != first {
				t.Fatalf("encoding changed after round trip:\n%s%s", first, buf.String())
			}
			if tt.data == "null" || tt.data == "" {
				if r.Data != nil || strings.Contains(first, `"data"`) {
					t.Fatalf("null data should be dropped: %s", first)
				}
			}
		})
	}
}

func TestCanonicalExcludesSeqAndHash(t *testing.T) {
	r := sampleChain(t, 1)[0]
	h, _ := hashOf(r)
	r.Seq, r.Hash = 99, strings.Repeat("0", 64)
	if h2, _ := hashOf(r); h2 != h {
		t.Fatal("Seq or Hash changed the hash")
	}
	r.Reason += "."
	if h3, _ := hashOf(r); h3 == h {
		t.Fatal("Reason did not change the hash")
	}
}

func TestValidate(t *testing.T) {
	ok := Record{Time: time.Now(), Kind: "session.transition", Actor: testActor, Session: "ses_ABC-12"}
	tests := []struct {
		name   string
		edit   func(*Record)
		errSub string // "" means valid
	}{
		{"ok", func(*Record) {}, ""},
		{"allow", func(r *Record) { r.Decision = DecisionAllow }, ""},
		{"deny", func(r *Record) { r.Decision = DecisionDeny }, ""},
		{"no session", func(r *Record) { r.Session = "" }, ""},
		{"zero time", func(r *Record) { r.Time = time.Time{} }, "time is zero"},
		{"empty kind", func(r *Record) { r.Kind = "" }, "kind is empty"},
		{"kind with space", func(r *Record) { r.Kind = "session transition" }, "kind"},
		{"kind too long", func(r *Record) { r.Kind = strings.Repeat("a", 65) }, "kind"},
		{"empty actor", func(r *Record) { r.Actor = "" }, "actor is empty"},
		{"actor not spiffe", func(r *Record) { r.Actor = "alice" }, "not a SPIFFE ID"},
		{"decision", func(r *Record) { r.Decision = "maybe" }, "decision"},
		{"decision case", func(r *Record) { r.Decision = "Allow" }, "decision"},
		{"session wildcard", func(r *Record) { r.Session = "ses_>" }, "session"},
		{"session dot", func(r *Record) { r.Session = "ses.a" }, "session"},
		{"session star", func(r *Record) { r.Session = "*" }, "session"},
		{"session space", func(r *Record) { r.Session = "ses a" }, "session"},
		{"session too long", func(r *Record) { r.Session = strings.Repeat("a", 129) }, "session"},
		{"prev not hex", func(r *Record) { r.Prev = strings.Repeat("z", 64) }, "prev"},
		{"data invalid", func(r *Record) { r.Data = json.RawMessage(`{`) }, "data"},
		{"diagnostic invalid", func(r *Record) { r.Diagnostic = json.RawMessage(`x`) }, "diagnostic"},
		{"reason not utf8", func(r *Record) { r.Reason = "\xff" }, "UTF-8"},
		{"workgroup too long", func(r *Record) { r.Workgroup = strings.Repeat("w", 1025) }, "workgroup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.edit(&r)
			err := validate(r)
			switch {
			case tt.errSub == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.errSub != "" && err == nil:
				t.Fatalf("want error containing %q", tt.errSub)
			case tt.errSub != "" && !strings.Contains(err.Error(), tt.errSub):
				t.Fatalf("error %q does not mention %q", err, tt.errSub)
			}
		})
	}
}

func TestVerifyRecordsDetectsTampering(t *testing.T) {
	const n = 8
	tests := []struct {
		name    string
		tamper  func([]Record) []Record
		seq     uint64
		problem Problem
	}{
		{"reason edited", func(rs []Record) []Record {
			rs[3].Reason = "nothing to see"
			return rs
		}, 4, ProblemHash},
		{"decision flipped", func(rs []Record) []Record {
			rs[0].Decision = DecisionDeny
			return rs
		}, 1, ProblemHash},
		{"data edited", func(rs []Record) []Record {
			rs[5].Data = json.RawMessage(`{"n":500}`)
			return rs
		}, 6, ProblemHash},
		{"edited and rehashed", func(rs []Record) []Record {
			rs[3].Reason = "nothing to see"
			rs[3].Hash, _ = hashOf(rs[3])
			return rs
		}, 5, ProblemPrev},
		{"last edited and rehashed, prev kept", func(rs []Record) []Record {
			rs[n-1].Prev = strings.Repeat("a", 64)
			rs[n-1].Hash, _ = hashOf(rs[n-1])
			return rs
		}, n, ProblemPrev},
		{"middle removed", func(rs []Record) []Record {
			return slices.Delete(rs, 4, 5)
		}, 5, ProblemGap},
		{"first removed", func(rs []Record) []Record {
			return rs[1:]
		}, 1, ProblemGap},
		{"first removed and renumbered", func(rs []Record) []Record {
			rs = rs[1:]
			for i := range rs {
				rs[i].Seq = uint64(i + 1)
			}
			return rs
		}, 1, ProblemPrev},
		{"middle removed and renumbered", func(rs []Record) []Record {
			rs = slices.Delete(rs, 4, 5)
			for i := range rs {
				rs[i].Seq = uint64(i + 1)
			}
			return rs
		}, 5, ProblemPrev},
		{"two swapped", func(rs []Record) []Record {
			rs[2], rs[3] = rs[3], rs[2]
			return rs
		}, 3, ProblemGap},
		{"two swapped with seqs swapped back", func(rs []Record) []Record {
			rs[2], rs[3] = rs[3], rs[2]
			rs[2].Seq, rs[3].Seq = 3, 4
			return rs
		}, 3, ProblemPrev},
		{"duplicated", func(rs []Record) []Record {
			return slices.Insert(rs, 3, rs[2])
		}, 4, ProblemGap},
		{"hash not hex", func(rs []Record) []Record {
			rs[1].Hash = "x"
			return rs
		}, 2, ProblemMalformed},
		{"actor emptied and rehashed", func(rs []Record) []Record {
			rs[1].Actor = ""
			rs[1].Hash, _ = hashOf(rs[1])
			return rs
		}, 2, ProblemMalformed},
	}
	if err := VerifyRecords(sampleChain(t, n)); err != nil {
		t.Fatalf("intact chain: %v", err)
	}
	if err := VerifyRecords(nil); err != nil {
		t.Fatalf("empty chain: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyRecords(tt.tamper(sampleChain(t, n)))
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("want ErrBroken, got %v", err)
			}
			var be *BreakError
			if !errors.As(err, &be) {
				t.Fatalf("want *BreakError, got %T", err)
			}
			if be.Seq != tt.seq || be.Problem != tt.problem {
				t.Fatalf("got break at %d (%s), want %d (%s): %v", be.Seq, be.Problem, tt.seq, tt.problem, err)
			}
		})
	}
}

func TestReadJSONLines(t *testing.T) {
	rs := sampleChain(t, 3)
	var buf bytes.Buffer
	for _, r := range rs {
		if err := writeJSONLine(&buf, r); err != nil {
			t.Fatal(err)
		}
	}
	good := buf.String()
	lines := strings.SplitAfter(good, "\n")

	t.Run("round trip", func(t *testing.T) {
		got, err := ReadJSONLines(strings.NewReader(good))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[2].Hash != rs[2].Hash || got[2].Seq != 3 {
			t.Fatalf("got %+v", got)
		}
		if err := VerifyRecords(got); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("crlf and blank lines", func(t *testing.T) {
		in := "\n" + strings.ReplaceAll(good, "\n", "\r\n") + "\n \n"
		got, err := ReadJSONLines(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyRecords(got); err != nil || len(got) != 3 {
			t.Fatalf("%d records, %v", len(got), err)
		}
	})
	bad := []struct{ name, line string }{
		{"not json", "{\n"},
		{"trailing data", strings.TrimSuffix(lines[0], "\n") + " {}\n"},
		{"extra space", strings.Replace(lines[0], `"kind":`, `"kind": `, 1)},
		{"unknown field", strings.Replace(lines[0], `{"seq":`, `{"extra":1,"seq":`, 1)},
		{"duplicate key", strings.Replace(lines[0], `"reason":"record 0",`, `"reason":"forged","reason":"record 0",`, 1)},
		{"escaped differently", strings.Replace(lines[0], `"kind":"envelope.accepted"`, `"kind":"\u0065nvelope.accepted"`, 1)},
		{"fields reordered", strings.Replace(lines[0], `"kind":"envelope.accepted","actor":"`+testActor+`"`, `"actor":"`+testActor+`","kind":"envelope.accepted"`, 1)},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if tt.line == lines[0] {
				t.Fatal("test edit did not apply")
			}
			_, err := ReadJSONLines(strings.NewReader(tt.line + lines[1]))
			if err == nil || !strings.Contains(err.Error(), "line 1") {
				t.Fatalf("want an error on line 1, got %v", err)
			}
		})
	}
}
