package devcluster

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLayout: a new cluster's ports are distinct and kept; a later New on the directory reads them back, and
// one for another number of members, or on a one-process network's directory, is refused naming what to pass.
func TestLayout(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{Dir: dir, Exe: "umbra", Controllers: 3, Routers: 2})
	if err != nil {
		t.Fatal(err)
	}
	l := c.Layout()
	seen := map[int]bool{}
	for _, m := range l.Controllers {
		for _, p := range []int{m.Ctrl, m.API, m.Enroll, m.Route, m.Metrics} {
			if p == 0 || seen[p] {
				t.Fatalf("port %d of %s is zero or taken twice: %+v", p, m.Name, l)
			}
			seen[p] = true
		}
	}
	for _, r := range l.Routers {
		for _, p := range []int{r.Edge, r.Link} {
			if p == 0 || seen[p] {
				t.Fatalf("port %d of %s is zero or taken twice: %+v", p, r.Name, l)
			}
			seen[p] = true
		}
	}
	if len(seen) != 19 {
		t.Fatalf("%d ports, want 19", len(seen))
	}
	if err := l.save(dir); err != nil {
		t.Fatal(err)
	}
	again, err := New(Config{Dir: dir, Exe: "umbra", Controllers: 3, Routers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if again.Layout().Controllers[2] != l.Controllers[2] || again.Layout().Routers[1] != l.Routers[1] {
		t.Fatalf("a second New chose other ports: %+v, want %+v", again.Layout(), l)
	}
	if n, m, ok := HasLayout(dir); !ok || n != 3 || m != 2 {
		t.Fatalf("HasLayout: %d, %d, %v", n, m, ok)
	}
	if _, err := New(Config{Dir: dir, Exe: "umbra", Controllers: 5, Routers: 2}); err == nil || !strings.Contains(err.Error(), "--controllers 3 --routers 2") {
		t.Fatalf("New for 5 controllers on a cluster of 3: %v", err)
	}
	single := t.TempDir()
	if err := os.WriteFile(filepath.Join(single, "admin.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Dir: single, Exe: "umbra", Controllers: 3, Routers: 1}); err == nil || !strings.Contains(err.Error(), "one-process network") {
		t.Fatalf("New on a one-process network's directory: %v", err)
	}
	for _, bad := range []Config{{Dir: dir, Controllers: 4, Routers: 1}, {Dir: dir, Controllers: 0, Routers: 1}, {Dir: dir, Controllers: 3}} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
}

// TestControllerArgs: the members of a cluster route their NATS servers to each other and keep three copies, the
// first initialising the overlay's raft cluster and the others joining it; a lone controller has none of that.
func TestControllerArgs(t *testing.T) {
	for _, tc := range []struct {
		controllers int
		want        []string // flags of controller i, each present
		none        []string // flags of controller i, each absent
		i           int
	}{
		{3, []string{"--nats-routes", "--replicas", "--cluster-init", "--router-token"}, []string{"--cluster-join"}, 0},
		{3, []string{"--nats-routes", "--replicas", "--cluster-join"}, []string{"--cluster-init", "--router-token"}, 2},
		{1, []string{"--router-token", "--metrics-listen"}, []string{"--nats-cluster-listen", "--nats-routes", "--replicas", "--cluster-init", "--cluster-join"}, 0},
	} {
		c, err := New(Config{Dir: t.TempDir(), Exe: "umbra", Controllers: tc.controllers, Routers: 1})
		if err != nil {
			t.Fatal(err)
		}
		args := c.controllerArgs(tc.i)
		for _, f := range tc.want {
			if !slices.Contains(args, f) {
				t.Errorf("%d controllers: controller %d's command line has no %s: %v", tc.controllers, tc.i, f, args)
			}
		}
		for _, f := range tc.none {
			if slices.Contains(args, f) {
				t.Errorf("%d controllers: controller %d's command line has %s: %v", tc.controllers, tc.i, f, args)
			}
		}
	}
}

// TestFirstStartStop tells a controller that stopped at the first start of the replicated stores from one that
// stopped for another reason.
func TestFirstStartStop(t *testing.T) {
	for _, tc := range []struct {
		log  string
		want bool
	}{
		{"time=... level=INFO msg=x\numbra controller: bucket umbra_identities: nats: API error: code=400 err_code=10005 description=no suitable peers for placement\n", true},
		{"umbra controller: stream UMBRA_AUDIT: context deadline exceeded\n", true},
		{"goroutine 1 [running]:\n\t/root/go/pkg/mod/github.com/openziti/ziti@v1.7.2/controller/server/controller.go:229 +0x270\n", true},
		{"umbra controller: --api-port 127.0.0.1:1280 is in use\n", false},
		{"", false},
	} {
		if got := FirstStartStop(tc.log); got != tc.want {
			t.Errorf("FirstStartStop(%q) = %v, want %v", tc.log, got, tc.want)
		}
	}
}

// TestTail keeps the end of what is written and finds its last line.
func TestTail(t *testing.T) {
	tl := &tail{max: 16}
	tl.Write([]byte("first line\nsecond line\n"))
	tl.Write([]byte("third\n\n"))
	if got := tl.text(); len(got) != 16 || !strings.HasSuffix(got, "third\n\n") {
		t.Fatalf("tail %q", got)
	}
	if got := tl.lastLine(); got != "third" {
		t.Fatalf("last line %q", got)
	}
}
