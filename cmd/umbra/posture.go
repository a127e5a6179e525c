package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/posture"
)

func cmdInventory(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var asJSON bool
	return withAgent(ctx, "inventory", args, stderr, func(f *flags) {
		f.BoolVar(&asJSON, "json", false, "print the inventory as JSON")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		inv, err := a.Controller().Inventory(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, inv)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "inventory of %s at %s\n\n", inv.Scope, inv.GeneratedAt.Format(time.RFC3339))
		fmt.Fprintln(tw, "IDENTITY\tKIND\tSTATE\tSVID EXPIRES\tLAST SEEN\tDIAL\tBIND\tWORKGROUPS")
		for _, id := range inv.Identities {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", id.SPIFFEID, kindOf(id), id.State, when(id.SVIDExpiresAt),
				when(id.LastSeen), len(id.Dial), len(id.Bind), len(id.Workgroups))
		}
		fmt.Fprintln(tw, "\nSERVICE\tBIND\tDIAL")
		for _, s := range inv.Services {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", s.Name, len(s.Bind), len(s.Dial))
		}
		fmt.Fprintln(tw, "\nWORKGROUP\tSTATUS\tORGANISATIONS\tMEMBERS")
		for _, w := range inv.Workgroups {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", w.ID, w.Status, len(w.Orgs), len(w.Members))
		}
		fmt.Fprintln(tw, "\nADVERTISEMENT\tNAME\tPROVIDER\tMAX MESSAGES\tMAX DURATION")
		for _, ad := range inv.Advertisements {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", ad.ID, ad.Name, ad.Provider, ad.MaxMessages, ad.MaxDuration)
		}
		fmt.Fprintln(tw, "\nGATEWAY\tKIND\tSTATE\tREPORTED\tSERVICE\tLIMITS\tGUARDRAILS")
		for _, g := range inv.Gateways {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", g.SPIFFEID, cmp.Or(g.Kind, "-"), g.State, when(g.ReportedAt),
				cmp.Or(g.Service, "-"), len(g.Limits), len(g.Guardrails))
		}
		fmt.Fprintln(tw, "\nMCP SERVER\tGATEWAY\tKIND\tOVERLAY SERVICE")
		for _, g := range inv.Gateways {
			for _, s := range g.Servers {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, g.SPIFFEID, s.Kind, cmp.Or(s.Service, "-"))
			}
		}
		fmt.Fprintln(tw, "\nTOOL\tGATEWAY\tSTATE\tPINNED DIGEST")
		for _, t := range inv.Tools {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Gateway, t.State, cmp.Or(t.Digest, "-"))
		}
		fmt.Fprintln(tw, "\nMODEL\tGATEWAY\tENDPOINTS")
		for _, m := range inv.Models {
			var eps []string
			for _, e := range m.Endpoints {
				eps = append(eps, e.Provider+" "+cmp.Or(e.Service, e.Host, "public API"))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.Gateway, strings.Join(eps, "; "))
		}
		if inv.Scope == "platform" {
			fmt.Fprintln(tw, "\nROUTER\tONLINE\tENROLLED\tVERSION")
			for _, r := range inv.Routers {
				fmt.Fprintf(tw, "%s\t%t\t%t\t%s\n", r.Name, r.Online, r.Enrolled, cmp.Or(r.Version, "-"))
			}
		}
		return tw.Flush()
	})
}

func kindOf(id api.InventoryIdentity) string {
	if id.Admin {
		return id.Kind + " (admin)"
	}
	return id.Kind
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// cmdPosture is `posture` (the findings and drift) and `posture baseline`.
func cmdPosture(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "baseline" {
		return withAgent(ctx, "posture baseline", args[1:], stderr, func(f *flags) { f.args(0, "") },
			func(a *agentsdk.Agent, _ []string) error {
				b, err := a.Controller().RecordBaseline(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "baseline of %s recorded at %s (%d items)\n", b.Scope, b.RecordedAt.Format(time.RFC3339), b.Items)
				return nil
			})
	}
	var asJSON bool
	var failOn, maxSVID, maxDuration, staleAfter, unusedAfter string
	var maxMessages uint64
	var maxAdmins, reachMinPeers int
	var reachFactor float64
	return withAgent(ctx, "posture", args, stderr, func(f *flags) {
		f.BoolVar(&asJSON, "json", false, "print the report as JSON")
		f.StringVar(&failOn, "fail-on", "high", "exit with status 1 if a finding of this severity or above exists (info, low, medium, high, critical)")
		f.StringVar(&maxSVID, "max-svid-lifetime", "", "policy: longest SVID lifetime (default 24h)")
		f.StringVar(&maxDuration, "max-duration", "", "policy: longest session an advertisement may offer (default 24h)")
		f.StringVar(&staleAfter, "stale-after", "", "policy: an identity not seen for this long is reported (default 720h)")
		f.Uint64Var(&maxMessages, "max-messages", 0, "policy: most messages an advertisement may offer per session (default 10000)")
		f.IntVar(&maxAdmins, "max-admins", 0, "policy: most administrators per organisation (default 3)")
		f.StringVar(&unusedAfter, "unused-after", "", "policy: a grant with no audit record of use for this long is reported (default 720h)")
		f.Float64Var(&reachFactor, "reach-factor", 0, "policy: an identity reaching more services than this many times the median of its kind is reported (default 3)")
		f.IntVar(&reachMinPeers, "reach-min-peers", 0, "policy: identities of a kind needed before their reach is compared (default 5)")
		f.args(0, "")
		f.check(func([]string) error {
			if _, err := posture.ParseSeverity(failOn); err != nil {
				return fmt.Errorf("--fail-on: %w", err)
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		q := url.Values{}
		for name, v := range map[string]string{"max_svid_lifetime": maxSVID, "max_duration": maxDuration, "stale_after": staleAfter, "unused_after": unusedAfter} {
			if v != "" {
				q.Set(name, v)
			}
		}
		if maxMessages > 0 {
			q.Set("max_messages", strconv.FormatUint(maxMessages, 10))
		}
		if maxAdmins > 0 {
			q.Set("max_admins", strconv.Itoa(maxAdmins))
		}
		if reachMinPeers > 0 {
			q.Set("reach_min_peers", strconv.Itoa(reachMinPeers))
		}
		if reachFactor > 0 {
			q.Set("reach_factor", strconv.FormatFloat(reachFactor, 'g', -1, 64))
		}
		rep, err := a.Controller().Posture(ctx, q)
		if err != nil {
			return err
		}
		if asJSON {
			if err := printJSON(stdout, rep); err != nil {
				return err
			}
		} else {
			printPosture(stdout, rep)
		}
		failing := 0
		for _, f := range rep.Findings {
			if posture.AtLeast(f.Severity, failOn) {
				failing++
			}
		}
		if failing > 0 {
			return fmt.Errorf("posture: %d findings at or above %s", failing, failOn)
		}
		return nil
	})
}

func printPosture(w io.Writer, rep api.PostureReport) {
	fmt.Fprintf(w, "posture of %s at %s: %d findings\n", rep.Scope, rep.GeneratedAt.Format(time.RFC3339), len(rep.Findings))
	for _, f := range rep.Findings {
		fmt.Fprintf(w, "\n[%s] %s: %s\n  subject:  %s\n  evidence: %s\n  fix:      %s\n", f.Severity, f.Check, f.Summary, f.Subject, f.Evidence, f.Fix)
	}
	if d := rep.Drift; d != nil {
		fmt.Fprintf(w, "\ndrift since the baseline of %s: %d added, %d removed, %d changed\n", d.BaselineAt.Format(time.RFC3339),
			len(d.Added), len(d.Removed), len(d.Changed))
		for _, set := range []struct {
			mark  string
			items []string
		}{{"+", d.Added}, {"-", d.Removed}, {"~", d.Changed}} {
			for _, it := range set.items {
				fmt.Fprintf(w, "  %s %s\n", set.mark, it)
			}
		}
	} else {
		fmt.Fprintln(w, "\nno baseline recorded: `umbra posture baseline` records one")
	}
}
