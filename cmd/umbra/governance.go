package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// withAgent parses flags (with --as) and runs fn with the connected agent and the positional arguments.
func withAgent(ctx context.Context, name string, args []string, stderr io.Writer, setup func(f *flags), fn func(a *agentsdk.Agent, pos []string) error) error {
	f := newFlags(name, stderr)
	var as string
	f.StringVar(&as, "as", "", "identity file")
	f.require("as")
	if setup != nil {
		setup(f)
	}
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	return fn(a, pos)
}

// resolveWorkgroup accepts <org>/<name>, or a bare name that is unique among the caller's workgroups.
func resolveWorkgroup(ctx context.Context, a *agentsdk.Agent, name string) (workgroups.WorkgroupID, error) {
	if strings.Contains(name, "/") {
		return parseWorkgroupID(name)
	}
	wgs, err := a.Controller().Workgroups(ctx)
	if err != nil {
		return workgroups.WorkgroupID{}, err
	}
	var found []string
	for _, w := range wgs {
		if w.ID.Name == name {
			found = append(found, w.ID.String())
		}
	}
	switch len(found) {
	case 1:
		return parseWorkgroupID(found[0])
	case 0:
		return workgroups.WorkgroupID{}, fmt.Errorf("no workgroup %q among yours; give it as <org>/<name>", name)
	}
	return workgroups.WorkgroupID{}, fmt.Errorf("workgroup name %q is ambiguous (%s); give it as <org>/<name>", name, strings.Join(found, ", "))
}

func one(pos []string, what string) (string, error) {
	if len(pos) != 1 {
		return "", fmt.Errorf("give exactly one %s", what)
	}
	return pos[0], nil
}

func cmdOrgCreate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var name string
	return withAgent(ctx, "org create", args, stderr, func(f *flags) {
		f.StringVar(&name, "name", "", "organisation name")
		f.require("name")
		f.args(0, "")
	},
		func(a *agentsdk.Agent, _ []string) error {
			resp, err := a.Controller().CreateOrg(ctx, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "created organisation %s; enroll its administrator %s with the token on stdout\n", resp.Org, resp.AdminID)
			fmt.Fprintln(stdout, resp.AdminToken)
			return nil
		})
}

func cmdWorkgroupCreate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var name string
	var invite multi
	return withAgent(ctx, "workgroup create", args, stderr, func(f *flags) {
		f.StringVar(&name, "name", "", "workgroup name")
		f.Var(&invite, "invite", "organisation to invite (repeatable); makes the workgroup inter-org")
		f.require("name")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		v, err := a.Controller().CreateWorkgroup(ctx, name, invite...)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "workgroup %s created (%s, %s)\n", v.ID, v.Scope, v.Status)
		return nil
	})
}

func cmdWorkgroupAnswer(decline bool) command {
	return func(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
		name := map[bool]string{false: "workgroup accept", true: "workgroup decline"}[decline]
		return withAgent(ctx, name, args, stderr, func(f *flags) { f.args(1, "the workgroup") }, func(a *agentsdk.Agent, pos []string) error {
			name, err := one(pos, "workgroup")
			if err != nil {
				return err
			}
			wg, err := resolveWorkgroup(ctx, a, name)
			if err != nil {
				return err
			}
			v, err := a.Controller().AnswerInvitation(ctx, wg, decline)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "workgroup %s is %s\n", v.ID, v.Status)
			return nil
		})
	}
}

func cmdWorkgroupMember(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "add" && args[0] != "remove" {
		if wantsHelp(args) {
			fmt.Fprintf(stderr, "Usage:\n%s\n", strings.Join(usageLines("workgroup member"), "\n"))
			return nil
		}
		return usagef("workgroup member", "missing add or remove")
	}
	remove := args[0] == "remove"
	var role string
	return withAgent(ctx, "workgroup member "+args[0], args[1:], stderr, func(f *flags) {
		f.StringVar(&role, "role", "member", "role: member or admin")
		f.args(2, "WORKGROUP SPIFFE-ID")
		f.check(func(pos []string) error {
			if _, err := spiffeid.FromString(pos[1]); err != nil {
				return fmt.Errorf("%q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/ORG/KIND/NAME)", pos[1])
			}
			if role != string(workgroups.RoleMember) && role != string(workgroups.RoleAdmin) {
				return fmt.Errorf("--role %q: want member or admin", role)
			}
			return nil
		})
	}, func(a *agentsdk.Agent, pos []string) error {
		if len(pos) != 2 {
			return errors.New("workgroup member: give WORKGROUP SPIFFE-ID")
		}
		name, err := resolveWorkgroup(ctx, a, pos[0])
		if err != nil {
			return err
		}
		member, err := spiffeid.FromString(pos[1])
		if err != nil {
			return fmt.Errorf("%q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/ORG/KIND/NAME)", pos[1])
		}
		if remove {
			_, err = a.Controller().RemoveMember(ctx, name, member)
		} else {
			_, err = a.Controller().AddMember(ctx, name, member, workgroups.Role(role))
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "workgroup %s: %s %s\n", name, map[bool]string{true: "removed", false: "added"}[remove], pos[1])
		return nil
	})
}

func cmdWorkgroupList(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "workgroup list", args, stderr, nil, func(a *agentsdk.Agent, _ []string) error {
		wgs, err := a.Controller().Workgroups(ctx)
		if err != nil {
			return err
		}
		for _, w := range wgs {
			fmt.Fprintf(stdout, "%s\t%s\t%s\t%d members\n", w.ID, w.Scope, w.Status, len(w.Members))
		}
		return nil
	})
}

func cmdWorkgroupDelete(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "workgroup delete", args, stderr, func(f *flags) { f.args(1, "the workgroup") }, func(a *agentsdk.Agent, pos []string) error {
		name, err := one(pos, "workgroup")
		if err != nil {
			return err
		}
		wg, err := resolveWorkgroup(ctx, a, name)
		if err != nil {
			return err
		}
		if err := a.Controller().DeleteWorkgroup(ctx, wg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "workgroup %s deleted\n", wg)
		return nil
	})
}

func readJSONFile(path string, v any, parse func([]byte) error) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := parse(b); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func cmdAdvertise(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var cardFile, termsFile string
	var wgs multi
	return withAgent(ctx, "advertise", args, stderr, func(f *flags) {
		f.StringVar(&cardFile, "card", "", "agent card JSON file")
		f.StringVar(&termsFile, "terms", "", "offered contract terms JSON file")
		f.Var(&wgs, "workgroup", "workgroup to advertise in (repeatable)")
		f.require("card", "terms", "workgroup")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		var card workgroups.AgentCard
		var terms workgroups.Terms
		if err := readJSONFile(cardFile, &card, func(b []byte) error { return json.Unmarshal(b, &card) }); err != nil {
			return err
		}
		if err := readJSONFile(termsFile, &terms, func(b []byte) (err error) { terms, err = workgroups.ParseTerms(b); return err }); err != nil {
			return err
		}
		var ids []workgroups.WorkgroupID
		for _, w := range wgs {
			id, err := resolveWorkgroup(ctx, a, w)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		ad, err := a.Advertise(ctx, card, terms, ids...)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, ad.ID)
		return nil
	})
}

func cmdDiscover(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var req api.DiscoverRequest
	var asJSON bool
	return withAgent(ctx, "discover", args, stderr, func(f *flags) {
		f.StringVar(&req.Skill, "skill", "", "only agents with this skill id or tag")
		f.StringVar(&req.Text, "text", "", "only agents whose name or description contains this")
		f.BoolVar(&asJSON, "json", false, "print the advertisements as JSON")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		ads, err := a.Discover(ctx, req)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, ads)
		}
		for _, ad := range ads {
			fmt.Fprintf(stdout, "%s\t%s\t%s\tmax %d messages, %s\n", ad.ID, ad.Card.Name, ad.Provider, ad.Terms.MaxMessages, ad.Terms.MaxDuration)
		}
		return nil
	})
}

func cmdSessionPropose(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var ad, types, purpose, category string
	var p workgroups.Proposal
	var dur time.Duration
	return withAgent(ctx, "session propose", args, stderr, func(f *flags) {
		f.StringVar(&ad, "ad", "", "advertisement id")
		f.StringVar(&purpose, "intent", "", "the purpose the session is for, kept by the session and declared on its envelopes")
		f.StringVar(&category, "intent-category", "", "the intent's category, e.g. procurement")
		f.Uint64Var(&p.MaxMessages, "max-messages", 0, "messages for the session, both directions (default: the offered maximum)")
		f.StringVar(&types, "types", "", "comma-separated message types (default: the offered ones)")
		f.DurationVar(&dur, "duration", 0, "session duration (default: the offered maximum)")
		f.Int64Var(&p.MaxEnvelopeBytes, "max-bytes", 0, "largest payload (default: the offered maximum)")
		f.require("ad")
		f.args(0, "")
		f.check(func([]string) error {
			if dur < 0 || p.MaxEnvelopeBytes < 0 {
				return errors.New("--duration and --max-bytes cannot be negative")
			}
			return checkIntentFlags(purpose, category)
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		p.MaxDuration = workgroups.Duration(dur)
		if purpose != "" {
			p.Intent = &workgroups.Intent{Purpose: purpose, Category: category}
		}
		if types != "" {
			p.AllowedMessageTypes = strings.Split(types, ",")
		}
		adID, err := parseAdvertisementID(ad)
		if err != nil {
			return err
		}
		s, err := a.Propose(ctx, adID, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "session %s %s\n", s.ID(), s.Info().State)
		fmt.Fprintln(stdout, s.ID())
		return nil
	})
}

func cmdSessionSend(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var id, typ, ct, corr, purpose, category string
	return withAgent(ctx, "session send", args, stderr, func(f *flags) {
		f.StringVar(&id, "session", "", "session id")
		f.StringVar(&typ, "type", "", "message type")
		f.StringVar(&ct, "content-type", "application/json", "payload content type")
		f.StringVar(&corr, "correlation", "", "correlation id (the envelope this answers)")
		f.StringVar(&purpose, "intent", "", "the purpose of this envelope (default: the session's)")
		f.StringVar(&category, "intent-category", "", "the intent's category")
		f.require("session", "type")
		f.args(0, "")
		f.check(func([]string) error { return checkIntentFlags(purpose, category) })
	}, func(a *agentsdk.Agent, _ []string) error {
		payload, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		if err != nil {
			return err
		}
		s, err := openSession(ctx, a, id)
		if err != nil {
			return err
		}
		opts := []agentsdk.SendOption{agentsdk.WithContentType(ct)}
		if corr != "" {
			opts = append(opts, agentsdk.WithCorrelationID(corr))
		}
		if purpose != "" {
			opts = append(opts, agentsdk.WithIntent(purpose, category))
		}
		seq, err := s.Send(ctx, typ, payload, opts...)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "sent %s as envelope %d of session %s\n", typ, seq, id)
		return nil
	})
}

// checkIntentFlags checks --intent and --intent-category: both absent, or a valid intent.
func checkIntentFlags(purpose, category string) error {
	if purpose == "" && category == "" {
		return nil
	}
	if err := (workgroups.Intent{Purpose: purpose, Category: category}).Validate(); err != nil {
		return fmt.Errorf("--intent: %w", err)
	}
	return nil
}

func cmdSessionRecv(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var id string
	var follow bool
	var idle time.Duration
	return withAgent(ctx, "session recv", args, stderr, func(f *flags) {
		f.StringVar(&id, "session", "", "session id (default: every open session of yours)")
		f.BoolVar(&follow, "follow", false, "keep receiving until interrupted")
		f.DurationVar(&idle, "idle", 2*time.Second, "without --follow, stop after this long with nothing new")
		f.args(0, "")
		f.check(func([]string) error {
			if idle <= 0 && !follow {
				return errors.New("--idle must be more than 0")
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		var ids []string
		if id != "" {
			ids = []string{id}
		} else {
			for _, state := range []workgroups.State{workgroups.StateAccepted, workgroups.StateActive, workgroups.StateClosed} {
				vs, err := a.Sessions(ctx, state)
				if err != nil {
					return err
				}
				for _, v := range vs {
					ids = append(ids, v.ID.String())
				}
			}
		}
		enc := json.NewEncoder(stdout)
		for _, sid := range ids {
			s, err := openSession(ctx, a, sid)
			if err != nil {
				return err
			}
			for {
				rctx, cancel := ctx, context.CancelFunc(func() {})
				if !follow {
					rctx, cancel = context.WithTimeout(ctx, idle)
				}
				env, err := s.Receive(rctx)
				cancel()
				if err != nil {
					if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
						break
					}
					return err
				}
				if err := enc.Encode(struct {
					Header  workgroups.Header `json:"header"`
					Payload string            `json:"payload"`
				}{env.Header, string(env.Payload)}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func cmdSessionAction(action string) command {
	return func(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
		var reason string
		return withAgent(ctx, "session "+action, args, stderr, func(f *flags) {
			f.StringVar(&reason, "reason", "", "reason to record")
			f.args(1, "the session ID")
		}, func(a *agentsdk.Agent, pos []string) error {
			id, err := one(pos, "session id")
			if err != nil {
				return err
			}
			switch action {
			case "accept":
				_, err = acceptSession(ctx, a, id, reason)
			case "reject":
				err = rejectSession(ctx, a, id, reason)
			case "withdraw":
				var sid workgroups.SessionID
				if sid, err = parseSessionID(id); err == nil {
					err = a.Withdraw(ctx, sid, reason)
				}
			default:
				var s *agentsdk.Session
				if s, err = openSession(ctx, a, id); err == nil {
					err = s.Close(ctx, reason)
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "session %s: %s done\n", id, action)
			return nil
		})
	}
}

func cmdSessionShow(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "session show", args, stderr, func(f *flags) { f.args(1, "the session ID") }, func(a *agentsdk.Agent, pos []string) error {
		id, err := one(pos, "session id")
		if err != nil {
			return err
		}
		s, err := openSession(ctx, a, id)
		if err != nil {
			return err
		}
		v, err := s.Refresh(ctx)
		if err != nil {
			return err
		}
		return printJSON(stdout, v)
	})
}

func cmdSessionList(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var state string
	return withAgent(ctx, "session list", args, stderr, func(f *flags) {
		f.StringVar(&state, "state", "", "only sessions in this state")
		f.args(0, "")
		f.check(func([]string) error {
			switch workgroups.State(state) {
			case "", workgroups.StateProposed, workgroups.StateHeld, workgroups.StateAccepted, workgroups.StateActive,
				workgroups.StateClosed, workgroups.StateRejected:
				return nil
			}
			return fmt.Errorf("--state %q: want proposed, held, accepted, active, closed or rejected", state)
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		vs, err := a.Sessions(ctx, workgroups.State(state))
		if err != nil {
			return err
		}
		for _, v := range vs {
			fmt.Fprintf(stdout, "%s\t%s\t%s -> %s\t%d envelopes\t%s\n", v.ID, v.State, v.Consumer, v.Provider, v.Envelopes, v.CloseReason)
		}
		return nil
	})
}

func cmdAuditSession(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "audit session", args, stderr, func(f *flags) { f.args(1, "the session ID") }, func(a *agentsdk.Agent, pos []string) error {
		id, err := one(pos, "session id")
		if err != nil {
			return err
		}
		out, err := auditSession(ctx, a, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, out)
	})
}
