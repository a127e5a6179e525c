package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// TestReadEnvelopeExport checks that an export is accepted only whole and as written: every session's lines
// matching the manifest, nothing after it, nothing cut short.
func TestReadEnvelopeExport(t *testing.T) {
	var lines [][]byte
	man := api.EnvelopeManifest{Through: 9, Complete: true}
	for i, sess := range []string{"s1", "s2", "s1"} {
		b, err := json.Marshal(api.ExportedEnvelope{StreamSeq: uint64(i + 1), Session: sess, ID: "e" + string(rune('a'+i)), To: "spiffe://umbra.local/x", Frame: []byte("frame")})
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, append(b, '\n'))
	}
	digest := func(idx ...int) string {
		h := sha256.New()
		for _, i := range idx {
			h.Write(lines[i])
		}
		return hex.EncodeToString(h.Sum(nil))
	}
	man.Sessions = []api.ArchivedSession{{Session: "s1", Envelopes: 2, SHA256: digest(0, 2)}, {Session: "s2", Envelopes: 1, SHA256: digest(1)}}
	man.Envelopes = 3
	end, err := json.Marshal(api.EnvelopeExportEnd{Manifest: &man})
	if err != nil {
		t.Fatal(err)
	}
	whole := append(bytes.Join(lines, nil), append(end, '\n')...)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	got, err := readEnvelopeExport(write("whole.jsonl", whole))
	if err != nil || len(got.Sessions) != 2 || got.Envelopes != 3 {
		t.Fatalf("a whole export: %+v, %v", got, err)
	}
	for _, c := range []struct{ name, file, want string }{
		{"changed", strings.Replace(string(whole), `"frame":"ZnJhbWU="`, `"frame":"ZnJhbWF="`, 1), "do not match the manifest"},
		{"no manifest", string(bytes.Join(lines, nil)), "no manifest at the end"},
		{"cut short", string(whole[:len(whole)-1]), "cut short"},
		{"line after the manifest", string(whole) + string(lines[0]), "follows the manifest"},
		{"session not in the manifest", string(lines[0]) + string(lines[2]) + `{"stream_seq":4,"session":"s3","id":"x","to":"y","frame":""}` + "\n" + string(lines[1]) + string(end) + "\n", "not in the manifest"},
		{"not an export", "hello\n", "not an exported envelope"},
	} {
		if _, err := readEnvelopeExport(write(c.name, []byte(c.file))); err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line saying %q", c.name, err, c.want)
		}
	}
}
