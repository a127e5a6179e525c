package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// cmdAuditVerify verifies the audit chain: online through the controller (--as), or offline, an exported file
// against the controller's checkpoint public key (--file, --key). Either way --after SEQ:HASH, a checkpoint
// kept from an earlier verification, must still be in the chain. Offline, a file with no checkpoint is only a
// warning unless --require-checkpoint.
func cmdAuditVerify(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("audit verify", stderr)
	var as, keyFile, after string
	var files []string
	var require bool
	f.StringVar(&as, "as", "", "identity file (online verification through the controller)")
	f.Func("file", "exported audit file to verify offline, as `umbra audit export` writes it; repeat it, oldest first, to join the export an archive kept to later ones", func(v string) error {
		files = append(files, v)
		return nil
	})
	f.StringVar(&keyFile, "key", "", "the controller's checkpoint public key (PEM, as `umbra audit key` prints it); required with --file")
	f.StringVar(&after, "after", "", "SEQ:HASH of a checkpoint kept from an earlier verification; fail unless the chain still holds it")
	f.BoolVar(&require, "require-checkpoint", false, "fail a chain with no signed checkpoint instead of warning")
	f.args(0, "")
	var opts audit.AnchorOptions
	f.check(func([]string) error {
		switch {
		case len(files) > 0 && as != "":
			return errors.New("give --file (offline) or --as (online), not both")
		case len(files) == 0 && as == "":
			return errors.New("give --as ID.json (online) or --file FILE --key KEY.pem (offline)")
		case len(files) > 0 && keyFile == "":
			return errors.New("--key is required with --file: give the controller's public key as `umbra audit key` printed it")
		case len(files) == 0 && keyFile != "":
			return errors.New("--key goes with --file; online, the controller checks checkpoints with its own key")
		}
		if after != "" {
			a, err := audit.ParseAnchor(after)
			if err != nil {
				return fmt.Errorf("--after %q: want SEQ:HASH as the last verification printed it", after)
			}
			opts.After = []audit.Anchor{a}
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	opts.RequireCheckpoint = require
	if len(files) > 0 {
		return verifyFiles(files, keyFile, opts, stdout, stderr)
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	var vopts []agentsdk.AuditVerifyOption
	for _, k := range opts.After {
		vopts = append(vopts, agentsdk.AuditAfter(k.Seq, k.Hash))
	}
	rep, err := a.Controller().AuditVerify(ctx, vopts...)
	if err != nil {
		return err
	}
	if !rep.OK {
		return brokenChain(rep.Error)
	}
	fmt.Fprintf(stdout, "audit chain verified: %d records, last %d %s\n", rep.Records, rep.LastSeq, rep.LastHash)
	if rep.LastCheckpoint == nil {
		return noCheckpoint(require, rep.Records, stderr)
	}
	c := rep.LastCheckpoint
	printCheckpoint(stdout, rep.Checkpoints, c.Seq, c.Hash, c.Time, rep.LastSeq-c.Seq)
	return nil
}

// brokenChain reports a chain that does not verify. The report counts no records then; the break's sequence
// says how many before it held (sequences start at 1).
func brokenChain(detail string) error {
	detail = strings.TrimPrefix(detail, "audit: ")
	if m := reBreakSeq.FindStringSubmatch(detail); m != nil {
		if seq, err := strconv.ParseUint(m[1], 10, 64); err == nil && seq > 1 {
			return fmt.Errorf("audit chain BROKEN: %s; records 1 to %d verified, the trail is not to be trusted from record %d on", detail, seq-1, seq)
		}
	}
	return fmt.Errorf("audit chain BROKEN: %s", detail)
}

var reBreakSeq = regexp.MustCompile(`chain broken at seq (\d+)`)

// verifyFiles verifies exports of one trail, oldest first, joined into one chain: an export taken after an
// archive starts after the archived head, and joined to the export that holds the head it verifies from record 1.
func verifyFiles(files []string, keyFile string, opts audit.AnchorOptions, stdout, stderr io.Writer) error {
	pub, err := readPublicKey(keyFile)
	if err != nil {
		return err
	}
	lists := make([][]audit.Record, len(files))
	for i, file := range files {
		if lists[i], err = readExport(file); err != nil {
			return err
		}
	}
	what := files[0]
	if len(files) > 1 {
		what = strings.Join(files, " + ")
	}
	rs, err := audit.JoinExports(lists...)
	if err != nil {
		return fmt.Errorf("%s do not join: %w", what, brokenChain(err.Error()))
	}
	rep, err := audit.VerifyAnchored(rs, pub, opts)
	if err != nil {
		return fmt.Errorf("%s does not verify: %w", what, brokenChain(err.Error()))
	}
	from := uint64(1)
	if len(rs) > 0 {
		from = rs[0].Seq
	}
	fmt.Fprintf(stdout, "audit file verified: %d records, last %d %s\n", rep.Records, rep.LastSeq, rep.LastHash)
	if from > 1 {
		fmt.Fprintf(stdout, "starts after the archived head %d %s, which an audit.archived record names; keep the export that holds it\n", from-1, rs[0].Prev)
	}
	if rep.Checkpoints == 0 {
		return noCheckpoint(opts.RequireCheckpoint, rep.Records, stderr)
	}
	printCheckpoint(stdout, rep.Checkpoints, rep.Last.Seq, rep.Last.Hash, rep.Last.Time, rep.Unanchored())
	return nil
}

func readExport(file string) ([]audit.Record, error) {
	fh, err := os.Open(file)
	if err != nil {
		return nil, usagef("audit verify", "--file %s: %s", file, fileProblem(err))
	}
	defer fh.Close()
	rs, err := audit.ReadJSONLines(fh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return rs, nil
}

// cmdAuditArchive trims the audit trail through the checkpoint a verified export printed.
func cmdAuditArchive(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var through string
	var at audit.Anchor
	return withAgent(ctx, "audit archive", args, stderr, func(f *flags) {
		f.StringVar(&through, "through", "", "SEQ:HASH that `umbra audit verify --file` printed for the export you keep: every record up to SEQ is removed")
		f.require("through")
		f.args(0, "")
		f.check(func([]string) error {
			a, err := audit.ParseAnchor(through)
			if err != nil {
				return fmt.Errorf("--through %q: want SEQ:HASH as `umbra audit verify --file` printed it for the export you keep", through)
			}
			at = a
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		out, err := a.Controller().AuditArchive(ctx, at.Seq, at.Hash)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "audit trail archived through %d %s (signed by checkpoint record %d); recorded as audit.archived record %d; the trail now starts at %d\n",
			out.Seq, out.Hash, out.CheckpointSeq, out.RecordSeq, out.FirstSeq)
		fmt.Fprintf(stdout, "keep for the next verification: --after %d:%s\n", out.Seq, out.Hash)
		return nil
	})
}

func readPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("audit verify", "--key %s: %s", path, fileProblem(err))
	}
	pub, err := audit.ParsePublicKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pub, nil
}

func noCheckpoint(require bool, records int, stderr io.Writer) error {
	if require {
		return fmt.Errorf("%w: nothing anchors these %d records; export again from the controller, which signs a checkpoint", audit.ErrUnanchored, records)
	}
	if records > 0 {
		fmt.Fprintln(stderr, "warning: no signed checkpoint: the chain is consistent with itself, but a whole rewrite would verify too (--require-checkpoint makes this fail)")
	}
	return nil
}

func printCheckpoint(w io.Writer, n int, seq uint64, h string, t time.Time, unsigned uint64) {
	fmt.Fprintf(w, "%d checkpoints verified; last covers %d %s, signed %s; %d records after it\n",
		n, seq, h, t.UTC().Format(time.RFC3339), unsigned)
	fmt.Fprintf(w, "keep for the next verification: --after %d:%s\n", seq, h)
}

func cmdAuditExport(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "audit export", args, stderr, func(f *flags) { f.args(0, "") }, func(a *agentsdk.Agent, _ []string) error {
		resp, err := a.Controller().AuditExport(ctx)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(stdout, resp.Body)
		return err
	})
}

// cmdAuditKey prints the controller's checkpoint public key as a PEM "PUBLIC KEY" block, the form --key reads.
func cmdAuditKey(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "audit key", args, stderr, func(f *flags) { f.args(0, "") }, func(a *agentsdk.Agent, _ []string) error {
		pub, err := a.Controller().AuditKey(ctx)
		if err != nil {
			return err
		}
		b, err := audit.PublicKeyPEM(pub)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "key id %s\n", audit.KeyID(pub))
		_, err = stdout.Write(b)
		return err
	})
}
