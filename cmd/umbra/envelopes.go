package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// cmdEnvelopesExport writes the envelopes of sessions removed after the retention to a file, ending with the
// manifest that `umbra envelopes archive` needs. The file appears under its name only once it is whole.
func cmdEnvelopesExport(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var out string
	var maxSessions int
	return withAgent(ctx, "envelopes export", args, stderr, func(f *flags) {
		f.StringVar(&out, "out", "", "file to write the export to (JSON lines ending in a manifest); it must not exist")
		f.IntVar(&maxSessions, "max-sessions", 0, "at most this many sessions in one export (default 1000, at most 10000)")
		f.require("out")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		if _, err := os.Lstat(out); err == nil {
			return usagef("envelopes export", "--out %s already exists: give a new file, an export is never overwritten", out)
		}
		resp, err := a.Controller().EnvelopesExport(ctx, maxSessions)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		partial := out + ".partial"
		f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("--out %s: %s", partial, fileProblem(err))
		}
		defer os.Remove(partial)
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return fmt.Errorf("reading the export: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("--out %s: %w", partial, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("--out %s: %w", partial, err)
		}
		man, err := readEnvelopeExport(partial)
		if err != nil {
			return err
		}
		if err := os.Rename(partial, out); err != nil {
			return fmt.Errorf("--out %s: %w", out, err)
		}
		fmt.Fprintf(stdout, "exported %d envelopes (%d bytes) of %d removed sessions, recorded through stream sequence %d, to %s\n",
			man.Envelopes, man.Bytes, len(man.Sessions), man.Through, out)
		if !man.Complete {
			fmt.Fprintf(stdout, "more sessions remain: archive this export (umbra envelopes archive --file %s), then export again\n", out)
		} else if len(man.Sessions) > 0 {
			fmt.Fprintf(stdout, "keep the file, then remove these envelopes from the controller: umbra envelopes archive --as ADMIN.json --file %s\n", out)
		}
		return nil
	})
}

// cmdEnvelopesArchive removes from the controller's envelope stream the envelopes an export holds.
func cmdEnvelopesArchive(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var file string
	var man api.EnvelopeManifest
	return withAgent(ctx, "envelopes archive", args, stderr, func(f *flags) {
		f.StringVar(&file, "file", "", "an export `umbra envelopes export` wrote: its envelopes are removed from the controller")
		f.require("file")
		f.args(0, "")
		f.check(func([]string) error {
			m, err := readEnvelopeExport(file)
			if err != nil {
				return usagef("envelopes archive", "%v", err)
			}
			man = m
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		var total api.EnvelopesArchived
		for rest := man.Sessions; len(rest) > 0; {
			n := min(len(rest), api.MaxArchiveSessions)
			out, err := a.Controller().EnvelopesArchive(ctx, api.EnvelopeArchiveRequest{Sessions: rest[:n]})
			if err != nil {
				if total.Sessions > 0 {
					fmt.Fprintf(stdout, "archived %d sessions before the error; running the command again completes the rest\n", total.Sessions)
				}
				return err
			}
			total.Sessions += out.Sessions
			total.Envelopes += out.Envelopes
			total.Bytes += out.Bytes
			total.Completed += out.Completed
			rest = rest[n:]
		}
		fmt.Fprintf(stdout, "archived %d envelopes (%d bytes) of %d sessions; each session's audit records the archive (envelopes.archived)\n",
			total.Envelopes, total.Bytes, total.Sessions)
		if total.Completed > 0 {
			fmt.Fprintf(stdout, "%d of the sessions had been archived before: their removal is now complete\n", total.Completed)
		}
		return nil
	})
}

// readEnvelopeExport reads an envelope export and checks it whole: every line an envelope, the last one the
// manifest, and each session's lines matching the count and digest the manifest gives.
func readEnvelopeExport(path string) (api.EnvelopeManifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return api.EnvelopeManifest{}, fmt.Errorf("--file %s: %s", path, fileProblem(err))
	}
	defer f.Close()
	type tally struct {
		h hash.Hash
		n int
	}
	got := map[string]*tally{}
	var man *api.EnvelopeManifest
	r := bufio.NewReaderSize(f, 1<<20)
	for line := 1; ; line++ {
		raw, err := r.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			break
		}
		if err != nil && err != io.EOF {
			return api.EnvelopeManifest{}, fmt.Errorf("--file %s: %w", path, err)
		}
		if len(raw) == 0 || raw[len(raw)-1] != '\n' {
			return api.EnvelopeManifest{}, fmt.Errorf("--file %s: line %d is cut short: the export is incomplete; export again", path, line)
		}
		if man != nil {
			return api.EnvelopeManifest{}, fmt.Errorf("--file %s: line %d follows the manifest: not an export as umbra envelopes export writes it", path, line)
		}
		var end api.EnvelopeExportEnd
		if json.Unmarshal(raw, &end) == nil && end.Manifest != nil {
			man = end.Manifest
			continue
		}
		var e api.ExportedEnvelope
		if err := json.Unmarshal(raw, &e); err != nil || e.Session == "" {
			return api.EnvelopeManifest{}, fmt.Errorf("--file %s: line %d is not an exported envelope", path, line)
		}
		t := got[e.Session]
		if t == nil {
			t = &tally{h: sha256.New()}
			got[e.Session] = t
		}
		t.h.Write(raw)
		t.n++
	}
	if man == nil {
		return api.EnvelopeManifest{}, fmt.Errorf("--file %s: no manifest at the end: the export is incomplete; export again", path)
	}
	for _, s := range man.Sessions {
		t := got[s.Session]
		if t == nil || t.n != s.Envelopes || hex.EncodeToString(t.h.Sum(nil)) != s.SHA256 {
			return api.EnvelopeManifest{}, fmt.Errorf("--file %s: the envelopes of session %s do not match the manifest: the file was changed or damaged; export again", path, s.Session)
		}
		delete(got, s.Session)
	}
	for s := range got {
		return api.EnvelopeManifest{}, fmt.Errorf("--file %s: session %s has envelopes but is not in the manifest; export again", path, s)
	}
	return *man, nil
}
