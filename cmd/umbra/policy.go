package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// cmdPolicySet is `policy set`: an organisation policy from a Cedar file (docs/intent.md, "Organisation policies").
func cmdPolicySet(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var org, name, file string
	var text []byte
	return withAgent(ctx, "policy set", args, stderr, func(f *flags) {
		f.StringVar(&org, "org", "", "the organisation whose policy it is")
		f.StringVar(&name, "name", "", "the policy's name, unique in the organisation; a policy of that name is replaced")
		f.StringVar(&file, "file", "", "the Cedar text: forbid policies only")
		f.require("org", "name", "file")
		f.args(0, "")
		f.check(func([]string) error {
			b, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("--file %s: %s", file, fileProblem(err))
			}
			text = b
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		p, err := a.Controller().SetPolicy(ctx, org, name, string(text))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "set policy %s of %s (sha256 %s)\n", p.Name, p.Org, p.SHA256)
		return nil
	})
}

// cmdPolicyList is `policy list`.
func cmdPolicyList(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var org string
	var asJSON bool
	return withAgent(ctx, "policy list", args, stderr, func(f *flags) {
		f.StringVar(&org, "org", "", "the organisation (default: yours; every one for the platform administrator)")
		f.BoolVar(&asJSON, "json", false, "print the policies, with their texts, as JSON")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		ps, err := a.Controller().Policies(ctx, org)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, ps)
		}
		if len(ps) == 0 {
			fmt.Fprintln(stdout, "no organisation policies")
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ORG\tNAME\tSHA256\tSET BY\tSET AT")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%s\t%.12s\t%s\t%s\n", p.Org, p.Name, p.SHA256, p.SetBy, p.SetAt.Format("2006-01-02 15:04:05Z07:00"))
		}
		return tw.Flush()
	})
}

// cmdPolicyRemove is `policy remove`.
func cmdPolicyRemove(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var org, name string
	return withAgent(ctx, "policy remove", args, stderr, func(f *flags) {
		f.StringVar(&org, "org", "", "the organisation whose policy it is")
		f.StringVar(&name, "name", "", "the policy's name")
		f.require("org", "name")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		p, err := a.Controller().RemovePolicy(ctx, org, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed policy %s of %s (sha256 %s)\n", p.Name, p.Org, p.SHA256)
		return nil
	})
}
