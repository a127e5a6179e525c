package mcpgw

import (
	"maps"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

// Naming. Tools and prompts are exposed as "<backend><sep><name>". Resources keep their URIs, with the backend
// name prepended to the scheme: "file:///a" of backend "files" is "files+file:///a", and likewise for URI
// templates. Backend names are [a-z][a-z0-9-]*, which makes "<backend>+<scheme>" a valid URI scheme and the
// mapping reversible without a table; a backend cannot serve a URI under another backend's prefix.

var (
	toolName  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
	uriScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
)

func (g *Gateway) exposedName(backend, name string) string { return backend + g.cfg.Separator + name }

func exposedURI(backend, uri string) string { return backend + "+" + uri }

// backendURI maps an exposed URI back to its backend and the backend's URI.
func backendURI(exposed string) (backend, uri string, ok bool) {
	backend, uri, ok = strings.Cut(exposed, "+")
	if !ok || !backendName.MatchString(backend) || !uriScheme.MatchString(uri) {
		return "", "", false
	}
	return backend, uri, true
}

// toolEntry is one tool a backend serves, with its pin state.
type toolEntry struct {
	backend  *backendConn
	name     string    // exposed
	def      *mcp.Tool // as the backend serves it
	digest   string
	state    pin.State
	findings []scan.Finding
	item     policy.Item
}

// promptEntry is one prompt a backend serves, with its pin state.
type promptEntry struct {
	backend  *backendConn
	name     string
	def      *mcp.Prompt
	digest   string // of the pinned definition: listing and placeholder messages
	state    pin.State
	findings []scan.Finding
	item     policy.Item
}

// resourceEntry is a resource or a resource template (exactly one of res, tmpl set).
type resourceEntry struct {
	backend  *backendConn
	uri      string // exposed URI or URI template
	res      *mcp.Resource
	tmpl     *mcp.ResourceTemplate
	digest   string // of the pinned definition: listing and, for a static resource, its contents' hash
	state    pin.State
	findings []scan.Finding
	item     policy.Item
}

// items is what one backend serves.
type items struct {
	tools     map[string]*toolEntry     // by exposed name
	prompts   map[string]*promptEntry   // by exposed name
	resources map[string]*resourceEntry // by exposed URI (or URI template)
}

func newItems() *items {
	return &items{tools: map[string]*toolEntry{}, prompts: map[string]*promptEntry{}, resources: map[string]*resourceEntry{}}
}

func (it *items) empty() bool {
	return len(it.tools) == 0 && len(it.prompts) == 0 && len(it.resources) == 0
}

// catalog is everything the backends currently serve.
type catalog struct {
	mu       sync.RWMutex
	backends map[string]*items
}

func newCatalog() *catalog { return &catalog{backends: map[string]*items{}} }

func (c *catalog) set(backend string, it *items) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.backends[backend] = it
}

func (c *catalog) drop(backend string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.backends[backend]
	delete(c.backends, backend)
	return ok && !it.empty()
}

// snapshot returns all items, merged; the entries are shared and must not be modified.
func (c *catalog) snapshot() *items {
	c.mu.RLock()
	defer c.mu.RUnlock()
	all := newItems()
	for _, it := range c.backends {
		maps.Copy(all.tools, it.tools)
		maps.Copy(all.prompts, it.prompts)
		maps.Copy(all.resources, it.resources)
	}
	return all
}

func (c *catalog) tool(name string) (*toolEntry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, it := range c.backends {
		if e, ok := it.tools[name]; ok {
			return e, true
		}
	}
	return nil, false
}

func (c *catalog) prompt(name string) (*promptEntry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, it := range c.backends {
		if e, ok := it.prompts[name]; ok {
			return e, true
		}
	}
	return nil, false
}

// resource returns the resource or template registered under key (an exposed URI or URI template).
func (c *catalog) resource(key string) (*resourceEntry, bool) {
	backend, _, ok := backendURI(key)
	if !ok {
		return nil, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if it := c.backends[backend]; it != nil {
		e, ok := it.resources[key]
		return e, ok
	}
	return nil, false
}

// backend returns what one backend serves now; the items are shared and must not be modified.
func (c *catalog) backend(name string) (*items, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	it, ok := c.backends[name]
	return it, ok
}

func (c *catalog) counts() map[pin.State]int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := map[pin.State]int{pin.Approved: 0, pin.Pending: 0, pin.Quarantined: 0, pin.Denied: 0}
	for _, it := range c.backends {
		for _, e := range it.tools {
			n[e.state]++
		}
	}
	return n
}

// toolItem describes a tool to policies. Missing annotation hints take the spec's defaults.
func (g *Gateway) toolItem(backend string, name string, t *mcp.Tool) policy.Item {
	it := policy.Item{Kind: policy.Tool, Name: name, Backend: backend, Original: t.Name, Title: t.Title,
		Destructive: true, Open: true}
	if a := t.Annotations; a != nil {
		if it.Title == "" {
			it.Title = a.Title
		}
		it.ReadOnly, it.Idempotent = a.ReadOnlyHint, a.IdempotentHint
		if a.DestructiveHint != nil {
			it.Destructive = *a.DestructiveHint
		}
		if a.OpenWorldHint != nil {
			it.Open = *a.OpenWorldHint
		}
	}
	for _, p := range g.cfg.Sensitive {
		if ok, _ := path.Match(p, name); ok {
			it.Sensitive = true
		}
	}
	return it
}

func promptItem(backend, name, original string) policy.Item {
	return policy.Item{Kind: policy.Prompt, Name: name, Backend: backend, Original: original}
}

func resourceItem(backend, uri, original string, template bool) policy.Item {
	return policy.Item{Kind: policy.Resource, Name: uri, Backend: backend, Original: original, Template: template}
}
