// Package policy decides, with Cedar, what a caller of the MCP gateway may see and do.
//
// The principal is the caller's verified SPIFFE ID, Umbra::Identity::"spiffe://...", with attributes org,
// admin, workgroups (a set of "org/name" strings), trust_domain, kind and name, and as parents its
// Umbra::Org::"<org>" and every Umbra::Workgroup::"<org>/<name>" it is an active member of.
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
// Every decision fails closed: any evaluation error denies, and the Diagnostic says which policies decided and
// why.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Entity types.
const (
	TypeIdentity  = "Umbra::Identity"
	TypeOrg       = "Umbra::Org"
	TypeWorkgroup = "Umbra::Workgroup"
	TypeBackend   = "Umbra::Backend"
	TypeTool      = "Umbra::Tool"
	TypePrompt    = "Umbra::Prompt"
	TypeResource  = "Umbra::Resource"
	TypeAction    = "Umbra::Action"
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
}

// Decision is an answer. Its zero value denies.
type Decision struct {
	Allow bool `json:"allow"`
	// Sensitive is set on an allowed call that needs a human approval.
	Sensitive  bool       `json:"sensitive,omitempty"`
	Diagnostic Diagnostic `json:"diagnostic"`
}

// Diagnostic explains a decision, for the audit record.
type Diagnostic struct {
	Policies []string `json:"policies,omitempty"` // the permits that allowed, or the forbids that denied
	Reasons  []string `json:"reasons,omitempty"`
	Errors   []string `json:"errors,omitempty"` // any error denies
	Version  string   `json:"policy_version,omitempty"`
}

// Engine holds a parsed policy text. It is immutable and safe for concurrent use.
type Engine struct {
	set       *cedar.PolicySet
	sensitive map[cedar.PolicyID]bool
	version   string
}

// Parse parses Cedar policy text. Policy IDs are the @id annotation when present, else "policy<index>".
// An empty text permits nothing.
func Parse(text string) (*Engine, error) {
	list, err := cedar.NewPolicyListFromBytes("policies", []byte(text))
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	e := &Engine{set: cedar.NewPolicySet(), sensitive: make(map[cedar.PolicyID]bool)}
	for i, p := range list {
		id := cedar.PolicyID("policy" + strconv.Itoa(i))
		if v, ok := p.Annotations()["id"]; ok {
			id = cedar.PolicyID(v)
		}
		if !e.set.Add(id, p) {
			return nil, fmt.Errorf("policy: line %d: policy id %q used twice", p.Position().Line, id)
		}
		if _, ok := p.Annotations()[SensitiveAnnotation]; ok {
			if p.Effect() != cedar.Permit {
				return nil, fmt.Errorf("policy: line %d: @%s only makes sense on a permit", p.Position().Line, SensitiveAnnotation)
			}
			e.sensitive[id] = true
		}
	}
	sum := sha256.Sum256([]byte(text))
	e.version = "sha256:" + hex.EncodeToString(sum[:12])
	return e, nil
}

// Version names the policy text: it changes whenever the text does.
func (e *Engine) Version() string { return e.version }

// Decide answers r.
func (e *Engine) Decide(r Request) Decision {
	if e == nil {
		return deny("", errors.New("no policies"))
	}
	req, entities, err := build(r)
	if err != nil {
		return deny(e.version, err)
	}
	dec, diag := cedar.Authorize(e.set, entities, req)
	d := Decision{Diagnostic: Diagnostic{Version: e.version}}
	for _, de := range diag.Errors {
		d.Diagnostic.Errors = append(d.Diagnostic.Errors, de.String())
	}
	for _, reason := range diag.Reasons {
		d.Diagnostic.Policies = append(d.Diagnostic.Policies, string(reason.PolicyID))
	}
	slices.Sort(d.Diagnostic.Policies)
	what := fmt.Sprintf("%s on %s", r.Action, r.Item.Name)
	switch {
	case len(diag.Errors) > 0:
		d.Diagnostic.Reasons = []string{"policy evaluation failed, denying " + what}
	case dec == cedar.Allow:
		d.Allow = true
		d.Diagnostic.Reasons = []string{"permitted " + what + " by " + strings.Join(d.Diagnostic.Policies, ", ")}
		if r.Action == CallTool {
			d.Sensitive = r.Item.Sensitive
			for _, reason := range diag.Reasons {
				if e.sensitive[reason.PolicyID] {
					d.Sensitive = true
					d.Diagnostic.Reasons = append(d.Diagnostic.Reasons, "policy "+string(reason.PolicyID)+" requires approval")
				}
			}
			if r.Item.Sensitive {
				d.Diagnostic.Reasons = append(d.Diagnostic.Reasons, "tool is configured as sensitive")
			}
		}
	case len(d.Diagnostic.Policies) > 0:
		d.Diagnostic.Reasons = []string{"forbade " + what + " by " + strings.Join(d.Diagnostic.Policies, ", ")}
	default:
		d.Diagnostic.Reasons = []string{"no policy permits " + what}
	}
	return d
}

func deny(version string, err error) Decision {
	return Decision{Diagnostic: Diagnostic{Reasons: []string{"invalid request, denying"}, Errors: []string{err.Error()}, Version: version}}
}

func build(r Request) (cedar.Request, cedar.EntityMap, error) {
	var zero cedar.Request
	if r.Principal.ID.IsZero() {
		return zero, nil, errors.New("principal has no SPIFFE ID")
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
		return zero, nil, fmt.Errorf("action %q does not apply to this item", r.Action)
	}
	if r.Item.Name == "" || r.Item.Backend == "" {
		return zero, nil, errors.New("item has no name or backend")
	}

	p := r.Principal
	wgs := make([]cedar.Value, 0, len(p.Workgroups))
	parents := []cedar.EntityUID{}
	if p.Org != "" {
		parents = append(parents, cedar.NewEntityUID(TypeOrg, cedar.String(p.Org)))
	}
	for _, wg := range p.Workgroups {
		wgs = append(wgs, cedar.String(wg))
		parents = append(parents, cedar.NewEntityUID(TypeWorkgroup, cedar.String(wg)))
	}
	kind, name := "", ""
	if segs := strings.Split(strings.TrimPrefix(p.ID.Path(), "/"), "/"); len(segs) == 3 {
		kind, name = segs[1], segs[2]
	}
	principal := cedar.Entity{
		UID:     cedar.NewEntityUID(TypeIdentity, cedar.String(p.ID.String())),
		Parents: cedar.NewEntityUIDSet(parents...),
		Attributes: cedar.NewRecord(cedar.RecordMap{
			"org":          cedar.String(p.Org),
			"admin":        cedar.Boolean(p.Admin),
			"workgroups":   cedar.NewSet(wgs...),
			"trust_domain": cedar.String(p.ID.TrustDomain().Name()),
			"kind":         cedar.String(kind),
			"name":         cedar.String(name),
		}),
	}

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
		"workgroups": cedar.NewSet(wgs...),
	}
	if argsAllowed {
		args := cedar.RecordMap{}
		if len(r.Arguments) > 0 {
			v, err := Arguments(r.Arguments)
			if err != nil {
				return zero, nil, err
			}
			args = v
		}
		ctx["arguments"] = cedar.NewRecord(args)
	}
	entities := cedar.EntityMap{principal.UID: principal, resource.UID: resource}
	return cedar.Request{
		Principal: principal.UID,
		Action:    cedar.NewEntityUID(TypeAction, cedar.String(r.Action)),
		Resource:  resource.UID,
		Context:   cedar.NewRecord(ctx),
	}, entities, nil
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
