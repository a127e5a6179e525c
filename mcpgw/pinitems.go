package mcpgw

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

// Prompts and resources are pinned like tools (package pin), over more than their listing:
//
//   - a prompt's pinned definition is its listing plus the messages prompts/get returns when every argument is
//     set to a placeholder ("{name}"): the gateway gets each prompt that way when it lists the backend, and
//     again beside each caller's get of a prompt that takes arguments (a prompt without arguments is checked
//     on the caller's own result), so that messages changed after listing are caught at the next get;
//   - a static resource's pinned definition is its listing plus the SHA-256 of the contents it returns: read
//     when the backend is listed, checked on every caller's read;
//   - a resource template's is its listing.
//
// A definition that differs from the approved one is quarantined and the get or read that found it refused.
// The gateway's own gets and reads carry pinCheckMeta in _meta, so a backend's logs can tell them apart.

// pinCheckMeta marks the gateway's own prompt gets and resource reads.
const pinCheckMeta = "umbra.dev/pin-check"

// Record kinds for prompt and resource pins; tools have their own (KindToolPinned, ...).
const (
	KindItemPinned      = "mcp.item_pinned"      // a prompt or resource definition seen for the first time
	KindItemQuarantined = "mcp.item_quarantined" // a prompt or resource definition changed after approval
	KindItemRestored    = "mcp.item_restored"    // a backend went back to the approved definition
	KindItemDecided     = "mcp.item_decided"     // an administrator approved or refused a prompt or resource version
)

// statusQuarantined: the backend's answer showed a definition that differs from the approved one.
const statusQuarantined = "quarantined"

func pinCheck() mcp.Meta { return mcp.Meta{pinCheckMeta: true} }

// promptProbe gets prompt p with a placeholder for each argument, as the gateway checks it.
func promptProbe(ctx context.Context, cs *mcp.ClientSession, p *mcp.Prompt) (*mcp.GetPromptResult, error) {
	args := map[string]string{}
	for _, a := range p.Arguments {
		if a != nil {
			args[a.Name] = "{" + a.Name + "}"
		}
	}
	return cs.GetPrompt(ctx, &mcp.GetPromptParams{Meta: pinCheck(), Name: p.Name, Arguments: args})
}

// promptDef is what is pinned of a prompt: its listing and its placeholder messages (or the backend's error).
func promptDef(p *mcp.Prompt, res *mcp.GetPromptResult, err error) map[string]any {
	d := map[string]any{"prompt": p}
	switch {
	case err != nil:
		d["error"] = err.Error()
	case res != nil:
		d["messages"] = res.Messages
		if res.Description != "" {
			d["description"] = res.Description
		}
	}
	return d
}

// contentHash is the SHA-256 of a resource's contents as the backend returned them.
func contentHash(res *mcp.ReadResourceResult) string {
	b, _ := json.Marshal(res.Contents)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func resourceDef(r *mcp.Resource, res *mcp.ReadResourceResult, err error) map[string]any {
	d := map[string]any{"resource": r}
	switch {
	case err != nil:
		d["error"] = err.Error()
	case res != nil:
		d["content_sha256"] = contentHash(res)
	}
	return d
}

// promptEntry pins a prompt, probing its messages, and describes it. A transport failure is returned: the
// listing is incomplete.
func (b *backendConn) promptEntry(ctx context.Context, cs *mcp.ClientSession, p *mcp.Prompt) (*promptEntry, error) {
	g := b.g
	name := g.exposedName(b.cfg.Name, p.Name)
	e := &promptEntry{backend: b, name: name, def: p, state: pin.Pending, item: promptItem(b.cfg.Name, name, p.Name)}
	res, err := promptProbe(ctx, cs, p)
	if err != nil && !isRPCError(err) {
		return nil, fmt.Errorf("prompts/get %s: %w", p.Name, err)
	}
	e.digest, e.state, e.findings = b.pinItem(ctx, pin.Ref{Kind: pin.Prompt, Backend: b.cfg.Name, Name: p.Name}, name, promptDef(p, res, err))
	return e, nil
}

// resourceEntry pins a static resource, reading its contents, and describes it.
func (b *backendConn) resourceEntry(ctx context.Context, cs *mcp.ClientSession, r *mcp.Resource) (*resourceEntry, error) {
	uri := exposedURI(b.cfg.Name, r.URI)
	e := &resourceEntry{backend: b, uri: uri, res: r, state: pin.Pending, item: resourceItem(b.cfg.Name, uri, r.URI, false)}
	res, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{Meta: pinCheck(), URI: r.URI})
	if err != nil && !isRPCError(err) {
		return nil, fmt.Errorf("resources/read %s: %w", r.URI, err)
	}
	e.digest, e.state, e.findings = b.pinItem(ctx, pin.Ref{Kind: pin.Resource, Backend: b.cfg.Name, Name: r.URI}, uri, resourceDef(r, res, err))
	return e, nil
}

func (b *backendConn) templateEntry(ctx context.Context, t *mcp.ResourceTemplate) *resourceEntry {
	uri := exposedURI(b.cfg.Name, t.URITemplate)
	e := &resourceEntry{backend: b, uri: uri, tmpl: t, state: pin.Pending, item: resourceItem(b.cfg.Name, uri, t.URITemplate, true)}
	e.digest, e.state, e.findings = b.pinItem(ctx, pin.Ref{Kind: pin.Resource, Backend: b.cfg.Name, Name: t.URITemplate}, uri,
		map[string]any{"template": t})
	return e
}

// pinItem scans and pins the definition def of a prompt or resource, records what changed, and returns its
// digest and state. It fails closed: a definition that cannot be pinned is Pending (hidden).
func (b *backendConn) pinItem(ctx context.Context, ref pin.Ref, exposed string, def any) (string, pin.State, []scan.Finding) {
	g := b.g
	raw, err := json.Marshal(def)
	if err != nil {
		g.log.Warn("mcpgw: definition not encodable", "item", ref.String(), "err", err)
		return "", pin.Pending, nil
	}
	findings := g.scanner.Definition(raw)
	obs, err := g.pins.Observe(ctx, ref, raw, findings, b.cfg.Trusted)
	if err != nil {
		g.log.Error("mcpgw: cannot check pin", "item", ref.String(), "err", err)
		return "", pin.Pending, findings
	}
	g.recordItemPin(ctx, ref, exposed, findings, obs)
	return obs.Digest, obs.State, findings
}

func (g *Gateway) recordItemPin(ctx context.Context, ref pin.Ref, exposed string, findings []scan.Finding, obs pin.Observation) {
	var kind, decision, reason string
	switch obs.Event {
	case pin.Pinned:
		kind, decision, reason = KindItemPinned, audit.DecisionAllow, "first seen; approved: trusted backend, nothing flagged"
	case pin.Held:
		kind, reason = KindItemPinned, "new definition; held for an administrator"
	case pin.Changed:
		kind, decision, reason = KindItemQuarantined, audit.DecisionDeny, "definition changed after approval; quarantined"
	case pin.Restored:
		kind, decision, reason = KindItemRestored, audit.DecisionAllow, "backend serves the approved definition again"
	default:
		return
	}
	if len(findings) > 0 {
		reason += fmt.Sprintf("; %d scanner finding(s)", len(findings))
	}
	g.log.Info("mcpgw: "+string(ref.Kind)+" "+reason, "name", exposed, "digest", obs.Digest)
	data, _ := json.Marshal(map[string]any{"item": ref.Kind, "name": exposed, "backend": ref.Backend, "backend_name": ref.Name,
		"digest": obs.Digest, "approved": obs.Record.Approved, "state": obs.State, "findings": findings})
	g.record(ctx, audit.Record{Kind: kind, Actor: g.self, Decision: decision, Reason: reason, Data: data})
}

// verifyItem checks a definition seen while serving a caller (a prompt's messages, a resource's contents)
// against the approved one the catalog holds. A difference is pinned (quarantining the item), the backend
// is listed again so that every caller loses the item, and the caller's request is refused.
func (g *Gateway) verifyItem(ctx context.Context, o *op, b *backendConn, ref pin.Ref, exposed, approved string, def any) error {
	raw, err := json.Marshal(def)
	if err == nil {
		var d string
		if d, _, err = pin.Digest(raw); err == nil && d == approved {
			return nil
		}
	}
	findings := g.scanner.Definition(raw)
	obs, perr := g.pins.Observe(ctx, ref, raw, findings, b.cfg.Trusted)
	if perr == nil {
		g.recordItemPin(ctx, ref, exposed, findings, obs)
	}
	if perr == nil && obs.State == pin.Approved { // approved meanwhile (an administrator was quicker)
		b.poke()
		return nil
	}
	b.poke()
	o.done(ctx, statusQuarantined, "served definition differs from the approved one")
	return rpcError(CodeNotAuthorized, o.ref, "", "%s changed since it was approved and is quarantined until an administrator reviews it", exposed)
}
