package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/controller"
)

// clusterFlags are the overlay cluster flags of `umbra controller` (docs/cluster.md).
type clusterFlags struct {
	secrets     string // --cluster-secrets
	bundle      []byte // its content, once the flags are checked
	trustDomain string // the bundle's trust domain
}

// addClusterFlags registers --cluster-init, --cluster-join and --cluster-secrets, with their checks.
func addClusterFlags(f *flags, cfg *controller.Config) *clusterFlags {
	c := &clusterFlags{}
	f.BoolVar(&cfg.ClusterInit, "cluster-init", false, "make the overlay controller the first member of a new controller cluster; others join through its tls:--advertise:--ctrl-port (docs/cluster.md)")
	f.StringVar(&cfg.ClusterJoin, "cluster-join", "", "join the controller cluster of the member at tls:HOST:PORT (its --advertise host and --ctrl-port); needs --cluster-secrets and the NATS cluster flags")
	f.StringVar(&c.secrets, "cluster-secrets", "", "install the cluster's keys from FILE (umbra controller secrets export) into the new, empty --data directory")
	f.check(func([]string) error {
		if cfg.ClusterInit && cfg.ClusterJoin != "" {
			return errors.New("--cluster-init and --cluster-join exclude each other: the first controller initialises, the others join it")
		}
		if cfg.ClusterJoin != "" {
			hp, ok := strings.CutPrefix(cfg.ClusterJoin, "tls:")
			if _, port, err := net.SplitHostPort(hp); !ok || err != nil || port == "" {
				return fmt.Errorf("--cluster-join %q: want tls:HOST:PORT, a member's --advertise host and --ctrl-port", cfg.ClusterJoin)
			}
			if cfg.NATSClusterListen == "" {
				return errors.New("--cluster-join needs --nats-cluster-listen and --nats-routes: the members share one governance state")
			}
		}
		if c.secrets == "" {
			return nil
		}
		if !cfg.ClusterInit && cfg.ClusterJoin == "" {
			return errors.New("--cluster-secrets is for a cluster member: give --cluster-join tls:HOST:PORT (or --cluster-init)")
		}
		b, err := os.ReadFile(c.secrets)
		if err != nil {
			return fmt.Errorf("--cluster-secrets %s: %s", c.secrets, fileProblem(err))
		}
		td, err := controller.ClusterSecretsTrustDomain(b)
		if err != nil {
			return fmt.Errorf("--cluster-secrets %s: %s", c.secrets, strings.TrimPrefix(err.Error(), "controller: "))
		}
		if cfg.TrustDomain != "" && cfg.TrustDomain != td {
			return fmt.Errorf("--cluster-secrets %s is for trust domain %s, not --trust-domain %s", c.secrets, td, cfg.TrustDomain)
		}
		c.bundle, c.trustDomain = b, td
		return nil
	})
	return c
}

// install puts the --cluster-secrets bundle into the data directory; with no --trust-domain the controller takes
// the bundle's.
func (c *clusterFlags) install(cfg *controller.Config) error {
	if c.bundle == nil {
		return nil
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = c.trustDomain
	}
	return controller.InstallClusterSecrets(cfg.DataDir, c.bundle)
}

// cmdControllerSecrets is `umbra controller secrets export`.
func cmdControllerSecrets(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && wantsHelp(args[:1]) {
		fmt.Fprintf(stderr, "Usage:\n%s\n", strings.Join(usageLines("controller secrets"), "\n"))
		return flag.ErrHelp
	}
	if len(args) == 0 || args[0] != "export" {
		return usagef("controller secrets", "missing subcommand: export")
	}
	f := newFlags("controller secrets export", stderr)
	var dataDir, out, td string
	f.StringVar(&dataDir, "data", "", "the data directory of the cluster's first controller (created, with its keys, if new)")
	f.StringVar(&out, "out", "", "file to write the secrets to (mode 0600; an existing file is not overwritten)")
	f.StringVar(&td, "trust-domain", "", "SPIFFE trust domain, for a new data directory (default umbra.local)")
	f.require("data", "out")
	f.args(0, "")
	f.check(func([]string) error {
		if _, err := os.Lstat(out); err == nil {
			return fmt.Errorf("--out %s exists; it is not overwritten: remove it or choose another file", out)
		}
		return nil
	})
	if _, err := f.parse(args[1:]); err != nil {
		return err
	}
	b, err := controller.ExportClusterSecrets(dataDir, td)
	if err != nil {
		return err
	}
	file, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return usagef("controller secrets export", "--out %s exists; it is not overwritten: remove it or choose another file", out)
	}
	if err != nil {
		return usagef("controller secrets export", "--out %s: %s", out, fileProblem(err))
	}
	_, err = file.Write(b)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return fmt.Errorf("writing %s: %w", out, err)
	}
	fmt.Fprintf(stdout, "cluster secrets of %s written to %s: it holds private keys; copy it to the joining controllers and delete it\n", dataDir, out)
	return nil
}

// cmdClusterStatus prints the controller cluster's members as the member that answered sees them.
func cmdClusterStatus(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var asJSON bool
	return withAgent(ctx, "cluster status", args, stderr, func(f *flags) {
		f.BoolVar(&asJSON, "json", false, "print the status as JSON")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		st, err := a.Controller().Cluster(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		if !st.Clustered {
			fmt.Fprintln(stdout, "a lone controller: not a cluster member")
			return nil
		}
		fmt.Fprintf(stdout, "answered by member %s\n", st.Member)
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MEMBER\tADDRESS\tROLE\tONLINE\tCONNECTED HERE\tNATS SERVER")
		for _, m := range st.Members {
			role := "follower"
			switch {
			case m.Leader:
				role = "leader"
			case !m.Voter:
				role = "non-voter"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%s\n", m.ID, m.Addr, role, m.Online, m.Connected, m.NATS)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "NATS meta group: %d servers\n", st.NATSSize)
		for _, p := range st.NATS {
			state := "current"
			switch {
			case p.Offline:
				state = "offline"
			case !p.Current:
				state = "behind"
			}
			if p.Leader {
				state += ", leader"
			}
			fmt.Fprintf(stdout, "  %s\t%s\n", p.Name, state)
		}
		return nil
	})
}

// cmdClusterRemove removes a member that is gone for good, so that a replacement takes its place.
func cmdClusterRemove(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var member string
	return withAgent(ctx, "cluster remove", args, stderr, func(f *flags) {
		f.StringVar(&member, "member", "", "the member ID to remove (umbra cluster status lists them); stop that controller for good first")
		f.require("member")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		out, err := a.Controller().RemoveClusterMember(ctx, member)
		if err != nil {
			return err
		}
		if out.NATS != "" {
			fmt.Fprintf(stdout, "removed member %s and its NATS server %s from the cluster\n", out.Member, out.NATS)
		} else {
			fmt.Fprintf(stdout, "removed member %s from the cluster\n", out.Member)
		}
		return nil
	})
}
