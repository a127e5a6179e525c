package devcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/umbra-mesh/umbra/internal/freeport"
)

// layoutFile is where a cluster's members and their ports are kept, in its directory.
const layoutFile = "cluster.json"

// Layout is a cluster's members and the loopback ports each listens on, chosen at the first start.
type Layout struct {
	Controllers []Controller `json:"controllers"`
	Routers     []Router     `json:"routers"`
}

// Controller is one `umbra controller` of the cluster.
type Controller struct {
	Name    string `json:"name"`    // c1, c2, ...; also its data directory under the cluster's
	Ctrl    int    `json:"ctrl"`    // --ctrl-port: overlay control plane and raft
	API     int    `json:"api"`     // --api-port: overlay edge API, named by the identities it enrolls
	Enroll  int    `json:"enroll"`  // --enroll-port
	Route   int    `json:"route"`   // --nats-cluster-listen
	Metrics int    `json:"metrics"` // --metrics-listen
}

// Router is one `umbra router` of the cluster.
type Router struct {
	Name string `json:"name"` // r1, r2, ...; also its data directory under the cluster's
	Edge int    `json:"edge"` // --edge
	Link int    `json:"link"` // --link: the routers link to each other
}

// loadLayout reads dir's layout; ok is false if dir has none.
func loadLayout(dir string) (l Layout, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, layoutFile))
	if errors.Is(err, os.ErrNotExist) {
		return l, false, nil
	}
	if err != nil {
		return l, false, fmt.Errorf("devcluster: %w", err)
	}
	if err := json.Unmarshal(b, &l); err != nil || len(l.Controllers) == 0 {
		return l, false, fmt.Errorf("devcluster: %s is not a cluster layout (%v): use a new directory", filepath.Join(dir, layoutFile), err)
	}
	return l, true, nil
}

// HasLayout reports whether dir holds a cluster started by this package, and of how many members.
func HasLayout(dir string) (controllers, routers int, ok bool) {
	l, ok, err := loadLayout(dir)
	if err != nil || !ok {
		return 0, 0, false
	}
	return len(l.Controllers), len(l.Routers), true
}

// newLayout chooses distinct free loopback ports for n controllers and m routers, below the kernel's ephemeral
// range (freeport): a port of that range could be taken by a member's outgoing connection before the member it
// is for binds it, and that member would stop with "address already in use".
func newLayout(n, m int) (Layout, error) {
	ports, err := freeport.Loopback(5*n + 2*m)
	if err != nil {
		return Layout{}, fmt.Errorf("devcluster: %w", err)
	}
	var l Layout
	for i := range n {
		p := ports[5*i:]
		l.Controllers = append(l.Controllers, Controller{Name: fmt.Sprintf("c%d", i+1), Ctrl: p[0], API: p[1], Enroll: p[2], Route: p[3], Metrics: p[4]})
	}
	for i := range m {
		p := ports[5*n+2*i:]
		l.Routers = append(l.Routers, Router{Name: fmt.Sprintf("r%d", i+1), Edge: p[0], Link: p[1]})
	}
	return l, nil
}

// save writes the layout into dir, owner-only.
func (l Layout) save(dir string) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, layoutFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	return nil
}
