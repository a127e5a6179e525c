// Package policy decides, with Cedar, what a caller of the MCP gateway may see and do.
//
// The language, the principal and the decision are those of every Umbra surface (package
// github.com/umbra-mesh/umbra/workgroups/authz): the principal is the caller's verified SPIFFE ID,
// Umbra::Identity::"spiffe://...", with attributes org, admin, workgroups (a set of Umbra::Workgroup entities),
// trust_domain, kind and name, and as parents its Umbra::Org::"<org>" and every Umbra::Workgroup::"<org>/<name>"
// it is an active member of.
//
// Resources are the gateway's items, each a child of Umbra::Backend::"<backend>":
//
//	Umbra::Tool::"<backend>__<tool>"   name, backend, tool, title, read_only, destructive, idempotent,
//	                                   open_world (the annotation hints, with the spec's defaults), sensitive
//	Umbra::Prompt::"<backend>__<name>" name, backend, prompt
//	Umbra::Resource::"<uri>"           uri, backend, original_uri, template (true for a URI template)
//
// Actions come in pairs, one to see an item and one to use it: list_tool/call_tool, list_prompt/get_prompt,
// list_resource/read_resource. Using requires both. The context holds org, admin and workgroups again and, for
// call_tool and get_prompt, arguments: the call's arguments as a Cedar record (objects become records, arrays
// sets, integers longs, other numbers decimals when they fit and strings when not; nulls are left out).
//
// A permit annotated @sensitive that allows a call_tool marks that call sensitive: it needs a human approval.
//
// Every decision fails closed: any evaluation error denies, and the Diagnostic (the shape every audit record
// carries) says which policies decided and why.
package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Entity types.
const (
	TypeIdentity  = authz.TypeIdentity
	TypeOrg       = authz.TypeOrg
	TypeWorkgroup = authz.TypeWorkgroup
	TypeBackend   = "Umbra::Backend"
	TypeTool      = "Umbra::Tool"
	TypePrompt    = "Umbra::Prompt"
	TypeResource  = "Umbra::Resource"
	TypeAction    = authz.TypeAction
)

// Action is what a caller asks to do with an item.
type Action string

// The actions.
const (
	ListTool     Action = "list_tool"
	CallTool     Action = "call_tool"
	ListPrompt   Action = "list_prompt"
	GetPrompt    Action = "get_prompt"
	ListResource Action = "list_resource"
	ReadResource Action = "read_resource"
)

// Kind is the kind of an item.
type Kind int

// The kinds of item.
const (
	Tool Kind = iota + 1
	Prompt
	Resource
)

// SensitiveAnnotation marks a permit whose calls need approval.
const SensitiveAnnotation = "sensitive"

// maxArgDepth bounds the nesting of arguments turned into Cedar values.
const maxArgDepth = 32

// Principal is a caller as policies see it.
type Principal struct {
	ID         spiffeid.ID
	Org        string
	Admin      bool
	Workgroups []string
}

// Item is what a request is about.
type Item struct {
	Kind     Kind
	Name     string // tools and prompts: the exposed name; resources: the exposed URI or URI template
	Backend  string
	Original string // the name, URI or template on the backend
	Template bool   // resources: a URI template

	// Tools only.
	Title                                   string
	ReadOnly, Destructive, Idempotent, Open bool
	Sensitive                               bool // listed as sensitive in the gateway's configuration
}

// Request is one question.
type Request struct {
	Principal Principal
	Action    Action
	Item      Item
	Arguments json.RawMessage // call_tool and get_prompt: a JSON object, or empty
	// Intent is what the caller declared for this request, if anything; policies see it as context.intent.
	Intent *authz.Intent
}

// Decision is an answer: the decision of every surface ([authz.Decision]), and whether an allowed call needs a
// human approval. Its zero value denies.
type Decision struct {
	authz.Decision
	// Sensitive is set on an allowed call that needs a human approval.
	Sensitive bool `json:"sensitive,omitempty"`
}

// Diagnostic explains a decision, for the audit record ([authz.Diagnostic]).
type Diagnostic = authz.Diagnostic

// Engine holds a parsed policy text. It is immutable and safe for concurrent use.
type Engine struct {
	set *authz.Policies
}

// Parse parses Cedar policy text. Policy IDs are the @id annotation when present, else "policy<index>".
// An empty text permits nothing. Errors are one line naming policies:<line>.
func Parse(text string) (*Engine, error) {
	set, err := authz.Parse("policies", text, authz.Options{Check: func(p *cedar.Policy) error {
		if _, ok := p.Annotations()[SensitiveAnnotation]; ok && p.Effect() != cedar.Permit {
			return fmt.Errorf("@%s only makes sense on a permit", SensitiveAnnotation)
		}
		return nil
	}})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &Engine{set: set}, nil
}

// Version names the policy text: it changes whenever the text does.
func (e *Engine) Version() string { return e.set.Version() }

// Decide answers r.
func (e *Engine) Decide(r Request) Decision {
	if e == nil {
		return Decision{Decision: authz.Denied(errors.New("no policies"))}
	}
	q, err := build(r)
	if err != nil {
		d := Decision{Decision: authz.Denied(err)}
		d.Diagnostic.Version = e.Version()
		return d
	}
	d := Decision{Decision: authz.Decide(q, e.set)}
	d.Diagnostic.Version = e.Version()
	if d.Allow && r.Action == CallTool {
		d.Sensitive = r.Item.Sensitive
		for _, id := range d.Diagnostic.Policies {
			if _, ok := e.set.Annotation(id, SensitiveAnnotation); ok {
				d.Sensitive = true
				d.Diagnostic.Reasons = append(d.Diagnostic.Reasons, "policy "+id+" requires approval")
			}
		}
		if r.Item.Sensitive {
			d.Diagnostic.Reasons = append(d.Diagnostic.Reasons, "tool is configured as sensitive")
		}
	}
	return d
}

func build(r Request) (authz.Query, error) {
	var zero authz.Query
	if r.Principal.ID.IsZero() {
		return zero, errors.New("principal has no SPIFFE ID")
	}
	var resType cedar.EntityType
	var argsAllowed bool
	switch {
	case r.Item.Kind == Tool && (r.Action == ListTool || r.Action == CallTool):
		resType, argsAllowed = TypeTool, r.Action == CallTool
	case r.Item.Kind == Prompt && (r.Action == ListPrompt || r.Action == GetPrompt):
		resType, argsAllowed = TypePrompt, r.Action == GetPrompt
	case r.Item.Kind == Resource && (r.Action == ListResource || r.Action == ReadResource):
		resType = TypeResource
	default:
		return zero, fmt.Errorf("action %q does not apply to this item", r.Action)
	}
	if r.Item.Name == "" || r.Item.Backend == "" {
		return zero, errors.New("item has no name or backend")
	}

	p := r.Principal
	principal := authz.Principal{ID: p.ID, Org: p.Org, Admin: p.Admin, Workgroups: p.Workgroups}.Entity()

	it := r.Item
	attrs := cedar.RecordMap{"backend": cedar.String(it.Backend)}
	switch it.Kind {
	case Tool:
		attrs["name"], attrs["tool"], attrs["title"] = cedar.String(it.Name), cedar.String(it.Original), cedar.String(it.Title)
		attrs["read_only"], attrs["destructive"] = cedar.Boolean(it.ReadOnly), cedar.Boolean(it.Destructive)
		attrs["idempotent"], attrs["open_world"] = cedar.Boolean(it.Idempotent), cedar.Boolean(it.Open)
		attrs["sensitive"] = cedar.Boolean(it.Sensitive)
	case Prompt:
		attrs["name"], attrs["prompt"] = cedar.String(it.Name), cedar.String(it.Original)
	case Resource:
		attrs["uri"], attrs["original_uri"], attrs["template"] = cedar.String(it.Name), cedar.String(it.Original), cedar.Boolean(it.Template)
	}
	resource := cedar.Entity{
		UID:        cedar.NewEntityUID(resType, cedar.String(it.Name)),
		Parents:    cedar.NewEntityUIDSet(cedar.NewEntityUID(TypeBackend, cedar.String(it.Backend))),
		Attributes: cedar.NewRecord(attrs),
	}

	ctx := cedar.RecordMap{
		"org":        cedar.String(p.Org),
		"admin":      cedar.Boolean(p.Admin),
		"workgroups": authz.WorkgroupSet(p.Workgroups),
	}
	if argsAllowed {
		args := cedar.RecordMap{}
		if len(r.Arguments) > 0 {
			v, err := Arguments(r.Arguments)
			if err != nil {
				return zero, err
			}
			args = v
		}
		ctx["arguments"] = cedar.NewRecord(args)
	}
	if r.Intent != nil {
		if err := r.Intent.Validate(); err != nil {
			return zero, err
		}
		ctx = authz.WithIntent(ctx, r.Intent)
	}
	return authz.Query{Principal: principal, Action: string(r.Action), Resource: resource, Context: ctx,
		What: fmt.Sprintf("%s on %s", r.Action, r.Item.Name)}, nil
}

// Arguments converts a JSON object to the Cedar record policies see as context.arguments.
func Arguments(b json.RawMessage) (cedar.RecordMap, error) {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("arguments: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("arguments: data after the JSON object")
	}
	if v == nil {
		return cedar.RecordMap{}, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("arguments: not a JSON object")
	}
	rec, err := toRecord(obj, 0)
	if err != nil {
		return nil, fmt.Errorf("arguments: %w", err)
	}
	return rec, nil
}

func toRecord(m map[string]any, depth int) (cedar.RecordMap, error) {
	out := make(cedar.RecordMap, len(m))
	for k, v := range m {
		cv, err := toValue(v, depth+1)
		if err != nil {
			return nil, err
		}
		if cv != nil {
			out[cedar.String(k)] = cv
		}
	}
	return out, nil
}

func toValue(v any, depth int) (cedar.Value, error) {
	if depth > maxArgDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxArgDepth)
	}
	switch t := v.(type) {
	case nil:
		return nil, nil
	case bool:
		return cedar.Boolean(t), nil
	case string:
		return cedar.String(t), nil
	case json.Number:
		if i, err := strconv.ParseInt(string(t), 10, 64); err == nil {
			return cedar.Long(i), nil
		}
		if f, err := strconv.ParseFloat(string(t), 64); err == nil && math.Abs(f) < 9e14 {
			if d, err := cedar.NewDecimalFromFloat(f); err == nil {
				return d, nil
			}
		}
		return cedar.String(t.String()), nil
	case []any:
		vals := make([]cedar.Value, 0, len(t))
		for _, e := range t {
			cv, err := toValue(e, depth+1)
			if err != nil {
				return nil, err
			}
			if cv != nil {
				vals = append(vals, cv)
			}
		}
		return cedar.NewSet(vals...), nil
	case map[string]any:
		rec, err := toRecord(t, depth)
		if err != nil {
			return nil, err
		}
		return cedar.NewRecord(rec), nil
	default:
		return nil, fmt.Errorf("unexpected JSON value %T", v)
	}
}
