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
	var as, file, keyFile, after string
	var require bool
	f.StringVar(&as, "as", "", "identity file (online verification through the controller)")
	f.StringVar(&file, "file", "", "exported audit file to verify offline, as `umbra audit export` writes it")
	f.StringVar(&keyFile, "key", "", "the controller's checkpoint public key (PEM, as `umbra audit key` prints it); required with --file")
	f.StringVar(&after, "after", "", "SEQ:HASH of a checkpoint kept from an earlier verification; fail unless the chain still holds it")
	f.BoolVar(&require, "require-checkpoint", false, "fail a chain with no signed checkpoint instead of warning")
	f.args(0, "")
	var opts audit.AnchorOptions
	f.check(func([]string) error {
		switch {
		case file != "" && as != "":
			return errors.New("give --file (offline) or --as (online), not both")
		case file == "" && as == "":
			return errors.New("give --as ID.json (online) or --file FILE --key KEY.pem (offline)")
		case file != "" && keyFile == "":
			return errors.New("--key is required with --file: give the controller's public key as `umbra audit key` printed it")
		case file == "" && keyFile != "":
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
	if file != "" {
		return verifyFile(file, keyFile, opts, stdout, stderr)
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

func verifyFile(file, keyFile string, opts audit.AnchorOptions, stdout, stderr io.Writer) error {
	pub, err := readPublicKey(keyFile)
	if err != nil {
		return err
	}
	fh, err := os.Open(file)
	if err != nil {
		return usagef("audit verify", "--file %s: %s", file, fileProblem(err))
	}
	defer fh.Close()
	rs, err := audit.ReadJSONLines(fh)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	rep, err := audit.VerifyAnchored(rs, pub, opts)
	if err != nil {
		return fmt.Errorf("%s does not verify: %w", file, brokenChain(err.Error()))
	}
	fmt.Fprintf(stdout, "audit file verified: %d records, last %d %s\n", rep.Records, rep.LastSeq, rep.LastHash)
	if rep.Checkpoints == 0 {
		return noCheckpoint(opts.RequireCheckpoint, rep.Records, stderr)
	}
	printCheckpoint(stdout, rep.Checkpoints, rep.Last.Seq, rep.Last.Hash, rep.Last.Time, rep.Unanchored())
	return nil
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
