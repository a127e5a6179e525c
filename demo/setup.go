package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Setup creates the scenario as its administrators would. The platform administrator (admin) creates the
// organisations, registers the two gateways and grants the overlay services; each organisation's administrator,
// enrolled here with the token the platform administrator got for it, creates its own workloads and workgroups,
// answers its invitations and adds its own members. Setup returns every workload's one-time enrollment token by
// Workload.Key(); the organisations' administrator identities are written to adminDir as <org>-admin.json.
func Setup(ctx context.Context, admin *agentsdk.Agent, adminDir string, feed *Feed) (map[string]string, error) {
	if feed == nil {
		feed = NewFeed(nil)
	}
	if err := os.MkdirAll(adminDir, 0o700); err != nil {
		return nil, fmt.Errorf("demo: setup: %w", err)
	}
	td := admin.ID().TrustDomain()
	platform := admin.Controller()
	orgAdmins := map[string]*agentsdk.Agent{}
	defer func() {
		for _, a := range orgAdmins {
			a.Close()
		}
	}()
	for _, org := range Orgs {
		resp, err := platform.CreateOrg(ctx, org)
		if err != nil {
			return nil, fmt.Errorf("demo: setup: %w", err)
		}
		id, err := agentsdk.Enroll(ctx, resp.AdminToken)
		if err != nil {
			return nil, fmt.Errorf("demo: setup: enroll %s's administrator: %w", org, err)
		}
		if err := id.Save(filepath.Join(adminDir, org+"-admin.json")); err != nil {
			return nil, fmt.Errorf("demo: setup: %w", err)
		}
		a, err := agentsdk.Connect(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("demo: setup: connect %s's administrator: %w", org, err)
		}
		orgAdmins[org] = a
		feed.Event("platform admin", "created organisation %-9s  administrator %s", org, resp.AdminID)
	}

	tokens := map[string]string{}
	for _, w := range append(append([]Workload{}, Agents...), Services...) {
		creator := orgAdmins[w.Org].Controller()
		if w.Kind == api.GatewayKind {
			// Gateways write into the shared audit trail: only the platform registers them.
			creator = platform
		}
		resp, err := creator.CreateIdentity(ctx, api.CreateIdentityRequest{Org: w.Org, Kind: w.Kind, Name: w.Name})
		if err != nil {
			return nil, fmt.Errorf("demo: setup: %w", err)
		}
		tokens[w.Key()] = resp.Token
	}
	feed.Event("org admins", "created %d workload identities (%d agents, 2 gateways, 3 MCP servers, 1 model server)",
		len(tokens), len(Agents))

	for _, wg := range Workgroups {
		if _, err := orgAdmins[wg.Owner].Controller().CreateWorkgroup(ctx, wg.Name, wg.Invite...); err != nil {
			return nil, fmt.Errorf("demo: setup: %w", err)
		}
		for _, org := range wg.Invite {
			if _, err := orgAdmins[org].Controller().AnswerInvitation(ctx, workgroups.WorkgroupID{Org: wg.Owner, Name: wg.Name}, false); err != nil {
				return nil, fmt.Errorf("demo: setup: %w", err)
			}
		}
		var names []string
		for _, m := range wg.Members {
			if _, err := orgAdmins[m.Org].Controller().AddMember(ctx, workgroups.WorkgroupID{Org: wg.Owner, Name: wg.Name}, m.ID(td), ""); err != nil {
				return nil, fmt.Errorf("demo: setup: %w", err)
			}
			names = append(names, m.Label())
		}
		kind := "inter-org, " + strings.Join(append([]string{wg.Owner}, wg.Invite...), " + ")
		if len(wg.Invite) == 0 {
			kind = "inside " + wg.Owner
		}
		feed.Event(wg.Owner+" admin", "workgroup %-28s active (%s): %s", wg.ID(), kind, strings.Join(names, ", "))
	}

	for _, g := range Grants {
		req := api.GrantRequest{Service: g.Service, Bind: []string{g.Bind.ID(td).String()}}
		var dial []string
		for _, d := range g.Dial {
			req.Dial = append(req.Dial, d.ID(td).String())
			dial = append(dial, d.Label())
		}
		if err := platform.Grant(ctx, req); err != nil {
			return nil, fmt.Errorf("demo: setup: %w", err)
		}
		feed.Event("platform admin", "dark service %-12s hosted by %s, usable by %s", g.Service, g.Bind.Label(), strings.Join(dial, ", "))
	}
	return tokens, nil
}

// tdOf returns the trust domain of an agent.
func tdOf(a *agentsdk.Agent) spiffeid.TrustDomain { return a.ID().TrustDomain() }
