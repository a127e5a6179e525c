package mcpgw

import (
	"context"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
)

// completionHandler forwards completion/complete for a prompt's or a resource template's argument to the
// backend serving it, under the policy that decides whether the caller may get that prompt or read that
// resource: a caller that may not does not learn that it exists. A backend without the completions
// capability answers with no values.
func (g *Gateway) completionHandler(c *caller) func(context.Context, *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
	return func(ctx context.Context, req *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
		ref := req.Params.Ref
		if ref == nil {
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "completion/complete: missing ref: give a ref/prompt or a ref/resource"}
		}
		var (
			b        *backendConn
			original mcp.CompleteReference
		)
		switch ref.Type {
		case "ref/prompt":
			o := g.newOp("prompt", c, req.Session.ID(), ref.Name)
			e, ok := g.catalog.prompt(ref.Name)
			if !ok || e.state != pin.Approved || !c.has(c.prompts, ref.Name) {
				return nil, o.refuse(ctx, "hidden", "no such prompt", unknownPrompt(ref.Name))
			}
			o.backend, o.original = e.backend.cfg.Name, e.def.Name
			if err := g.authorize(ctx, o, c, policy.ListPrompt, policy.GetPrompt, e.item, e.item, nil, unknownPrompt(ref.Name)); err != nil {
				return nil, err
			}
			b, original = e.backend, mcp.CompleteReference{Type: ref.Type, Name: e.def.Name}
		case "ref/resource":
			o := g.newOp("resource", c, req.Session.ID(), ref.URI)
			e, ok := g.catalog.resource(ref.URI)
			if !ok || e.state != pin.Approved || !c.has(c.resources, ref.URI) {
				return nil, o.refuse(ctx, "hidden", "no such resource", mcp.ResourceNotFoundError(ref.URI))
			}
			_, uri, _ := backendURI(ref.URI)
			o.backend, o.original = e.backend.cfg.Name, uri
			if err := g.authorize(ctx, o, c, policy.ListResource, policy.ReadResource, e.item, e.item, nil, mcp.ResourceNotFoundError(ref.URI)); err != nil {
				return nil, err
			}
			b, original = e.backend, mcp.CompleteReference{Type: ref.Type, URI: uri}
		default:
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "completion/complete: ref type " + ref.Type + " unknown: use ref/prompt or ref/resource"}
		}
		cs, _, err := b.session(ctx, req.Session)
		if err != nil {
			return nil, rpcError(CodeUnavailable, newRef(), "", "%s is unavailable", b.cfg.Name)
		}
		if caps := cs.InitializeResult().Capabilities; caps == nil || caps.Completions == nil {
			return &mcp.CompleteResult{Completion: mcp.CompletionResultDetails{Values: []string{}}}, nil
		}
		cctx, cancel := g.callContext(ctx)
		defer cancel()
		p := *req.Params
		p.Ref = &original
		return cs.Complete(cctx, &p)
	}
}
