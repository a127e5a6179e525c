package umbra_test

import (
	"encoding/json"
	"fmt"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPackageDocs fails if a package has no package comment.
func TestPackageDocs(t *testing.T) {
	dirs := map[string]bool{}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dirs[filepath.Dir(path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir := range dirs {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Fatal(err)
		}
		for name, pkg := range pkgs {
			documented := false
			for _, f := range pkg.Files {
				if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package "+name+" ") || f.Doc != nil && name == "main" && strings.HasPrefix(f.Doc.Text(), "Command ") {
					documented = true
				}
			}
			if !documented {
				t.Errorf("package %s in %s has no package comment", name, dir)
			}
		}
	}
}

// rootModule is this repository's main module. The SDK, the domain package and the plumbing they share with the
// server are modules of their own below it (see go.work).
const rootModule = "github.com/umbra-mesh/umbra"

// nestedModule is a Go module in a subdirectory of the repository.
type nestedModule struct {
	Path string // module path
	Dir  string // slash-separated, relative to the repository root
}

// nestedModules lists the repository's modules other than the root, from their go.mod files.
func nestedModules(t *testing.T) []nestedModule {
	t.Helper()
	var mods []nestedModule
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || d.Name() != "go.mod" || path == "go.mod" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		m := regexp.MustCompile(`(?m)^module\s+(\S+)\s*$`).FindSubmatch(b)
		if m == nil {
			return fmt.Errorf("%s: no module line", path)
		}
		mods = append(mods, nestedModule{Path: string(m[1]), Dir: filepath.ToSlash(filepath.Dir(path))})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) == 0 {
		t.Fatal("no nested modules found: run the test from the repository root")
	}
	return mods
}

// serverDep reports why an SDK dependency is server code, or "" if it is not.
func serverDep(dep string, mods []nestedModule) string {
	for _, banned := range []string{"github.com/openziti/ziti", "github.com/nats-io/nats-server"} {
		if dep == banned || strings.HasPrefix(dep, banned+"/") {
			return "server code"
		}
	}
	if dep == rootModule || strings.HasPrefix(dep, rootModule+"/") {
		for _, m := range mods {
			if dep == m.Path || strings.HasPrefix(dep, m.Path+"/") {
				return ""
			}
		}
		return "a package of the root module (controller, router, gateways and their plumbing)"
	}
	return ""
}

// TestSDKImportsNoServerCode fails if the SDK (or a module it shares with the controller), or one of their tests,
// depends on controller, router, gateway or OpenZiti/NATS server code: the nested modules may import only each
// other and their own dependencies, never a package of the root module.
func TestSDKImportsNoServerCode(t *testing.T) {
	mods := nestedModules(t)
	for _, m := range mods {
		// With -test: a test of a nested module that imports the root module breaks `go mod tidy` in every module
		// that requires it (tidy loads the tests of the packages a module imports).
		out, err := exec.Command("go", "list", "-deps", "-test", "-f", "{{.ImportPath}}", "./"+m.Dir+"/...").CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", m.Dir, err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			// "p [q.test]" is p as compiled for q's test; "p_test" and "p.test" are p's external test and test main.
			dep, _, _ := strings.Cut(line, " ")
			dep = strings.TrimSuffix(strings.TrimSuffix(dep, ".test"), "_test")
			if why := serverDep(dep, mods); why != "" {
				t.Errorf("module %s depends on %s: %s", m.Path, dep, why)
			}
		}
	}
}

// TestNestedModules runs go vet and the tests of the repository's nested modules. In workspace mode (go.work)
// `go test ./...` at the root stops at a module boundary, so without this test the README's test command would
// skip the SDK and the domain package. It also fails if go.work does not use every nested module.
func TestNestedModules(t *testing.T) {
	mods := nestedModules(t)
	work, err := os.ReadFile("go.work")
	if err != nil {
		t.Fatalf("read go.work: %v", err)
	}
	var patterns []string
	for _, m := range mods {
		if !regexp.MustCompile(`(?m)^\s*(use\s+)?\./` + regexp.QuoteMeta(m.Dir) + `\s*$`).Match(work) {
			t.Errorf("go.work does not use ./%s (module %s): add it so the workspace builds and tests it", m.Dir, m.Path)
		}
		patterns = append(patterns, "./"+m.Dir+"/...")
		// Read every file of the module, so that the test cache of this package notices when one changes.
		err := filepath.WalkDir(m.Dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			_, err = os.ReadFile(path)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if t.Failed() {
		return
	}
	run := func(args ...string) {
		t.Helper()
		start := time.Now()
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("go %s: ok in %s", strings.Join(args, " "), time.Since(start).Round(time.Second))
	}
	// Each nested module also resolves on its own, as a third party's build sees it: its go.mod and go.sum are
	// complete without the workspace.
	for _, m := range mods {
		cmd := exec.Command("go", "list", "-m", "all")
		cmd.Dir, cmd.Env = m.Dir, append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("module %s without the workspace: go list -m all: %v\n%s", m.Path, err, out)
		}
		cmd = exec.Command("go", "list", "-deps", "./...")
		cmd.Dir, cmd.Env = m.Dir, append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("module %s without the workspace: go list -deps ./...: %v\n%s", m.Path, err, out)
		}
	}
	run(append([]string{"vet"}, patterns...)...)
	args := []string{"test", "-count=1", "-p=1"}
	if testing.Short() {
		args = append(args, "-short")
	}
	if deadline, ok := t.Deadline(); ok {
		left := time.Until(deadline) - 30*time.Second
		if left < time.Minute {
			t.Fatalf("too little time left for the nested modules' tests (%s): raise -timeout", time.Until(deadline))
		}
		args = append(args, "-timeout="+left.Round(time.Second).String())
	}
	run(append(args, patterns...)...)
}

// externalAgent is a third party's agent: it uses the SDK's public API only (enroll, connect, advertise,
// discover, propose, send, receive, serve, the administrator's client).
const externalAgent = `// Command agent is an agent outside the Umbra repository.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

func main() {
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	id, err := agentsdk.Enroll(ctx, os.Getenv("UMBRA_TOKEN"))
	if err != nil {
		return err
	}
	agent, err := agentsdk.Connect(ctx, id)
	if err != nil {
		return err
	}
	defer agent.Close()

	admin := agent.Controller()
	wg, err := workgroups.ParseWorkgroupID("acme/pricing")
	if err != nil {
		return err
	}
	peer, err := spiffeid.FromString("spiffe://umbra.local/acme/agent/buyer")
	if err != nil {
		return err
	}
	if _, err := admin.AddMember(ctx, wg, peer, workgroups.RoleMember); err != nil {
		return err
	}
	created, err := admin.CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: "helper"})
	if err != nil {
		return err
	}
	fmt.Println("token for", created.SPIFFEID)

	ad, err := agent.Advertise(ctx, workgroups.AgentCard{Name: "Quoter", Version: "1", MessageTypes: []string{"quote.*"}},
		workgroups.Terms{MaxMessages: 10, AllowedMessageTypes: []string{"quote.*"}}, wg)
	if err != nil {
		return err
	}
	found, err := agent.Discover(ctx, api.DiscoverRequest{Skill: "pricing"})
	if err != nil {
		return err
	}
	fmt.Println(len(found), "advertisements")
	sess, err := agent.Propose(ctx, ad.ID, workgroups.Proposal{})
	if err != nil {
		return err
	}
	var sid workgroups.SessionID = sess.ID()
	if _, err := sess.Send(ctx, "quote.request", []byte("{}")); err != nil {
		return err
	}
	in, err := sess.Receive(ctx)
	if err != nil {
		return err
	}
	fmt.Println(sid, in.Header.Type)
	return agent.Serve(ctx, time.Second, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) (string, []byte, error) {
		return "quote.offer", []byte("{}"), nil
	})
}
`

// internalImport is a package that imports the SDK's plumbing, which nobody outside the repository may.
const internalImport = `// Package sneaky imports Umbra's internal plumbing.
package sneaky

import "github.com/umbra-mesh/umbra/internal/pki"

var _ = pki.NewKey
`

// TestSDKExternalModule builds, outside the workspace, a module of a third party that requires the SDK and
// replaces only Umbra's own module paths with this checkout (as `go get` would fetch them): it must build and
// vet with no other replace, may not import Umbra's internal packages, and its module graph must not contain the
// OpenZiti controller, the NATS server or pfxlog v1 (which breaks openziti/identity). It uses the module proxy
// for third-party modules not in the module cache.
func TestSDKExternalModule(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	mods := nestedModules(t)
	dir := t.TempDir()
	var gomod strings.Builder
	gomod.WriteString("module example.com/agent\n\ngo 1.26.8\n\nrequire github.com/umbra-mesh/umbra/agentsdk v0.0.0-00010101000000-000000000000\n\n")
	for _, m := range mods {
		fmt.Fprintf(&gomod, "replace %s => %s\n", m.Path, filepath.Join(root, filepath.FromSlash(m.Dir)))
	}
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", gomod.String())
	write("main.go", externalAgent)

	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	goCmd := func(args ...string) (string, error) {
		t.Helper()
		start := time.Now()
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		t.Logf("go %s: %s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
		return string(out), err
	}
	if out, err := goCmd("mod", "tidy"); err != nil {
		// The go command's errors when it cannot reach the module proxy.
		unreachable := regexp.MustCompile(`dial tcp|no such host|i/o timeout|connection refused|network is unreachable|TLS handshake timeout|proxyconnect`)
		if unreachable.MatchString(out) {
			t.Skipf("the module proxy is unreachable, so a third party's module cannot be resolved here:\n%s", out)
		}
		t.Fatalf("go mod tidy in a third party's module: %v\n%s", err, out)
	}
	if out, err := goCmd("vet", "./..."); err != nil {
		t.Fatalf("go vet of a third party's agent: %v\n%s", err, out)
	}
	if out, err := goCmd("build", "-o", filepath.Join(dir, "agent.bin"), "."); err != nil {
		t.Fatalf("go build of a third party's agent: %v\n%s", err, out)
	}

	// The module file holds requirements and the replacements of Umbra's module paths, nothing else.
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "replace "); ok && !strings.HasPrefix(rest, rootModule+"/") {
			t.Errorf("the third party's go.mod needs a replace of a module not Umbra's: %s", line)
		}
	}

	graph, err := goCmd("mod", "graph")
	if err != nil {
		t.Fatalf("go mod graph: %v\n%s", err, graph)
	}
	for _, edge := range strings.Split(graph, "\n") {
		f := strings.Fields(edge)
		if len(f) != 2 {
			continue
		}
		mod := f[1]
		switch {
		case strings.HasPrefix(mod, "github.com/openziti/ziti@"):
			t.Errorf("the SDK's module graph contains the OpenZiti controller: %s", edge)
		case strings.HasPrefix(mod, "github.com/nats-io/nats-server/"):
			t.Errorf("the SDK's module graph contains the NATS server: %s", edge)
		case strings.HasPrefix(mod, "github.com/michaelquigley/pfxlog@v1."):
			t.Errorf("the SDK's module graph contains pfxlog v1, which openziti/identity does not compile with: %s", edge)
		case mod == rootModule || strings.HasPrefix(mod, rootModule+"@"):
			t.Errorf("the SDK's module graph contains the root module (the server): %s", edge)
		}
	}
	deps, err := goCmd("list", "-deps", "-f", "{{.ImportPath}}", ".")
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, deps)
	}
	for _, dep := range strings.Fields(deps) {
		if why := serverDep(dep, mods); why != "" {
			t.Errorf("a third party's agent links %s: %s", dep, why)
		}
	}
	if !slices.Contains(strings.Fields(deps), "github.com/openziti/sdk-golang/ziti") {
		t.Errorf("a third party's agent does not link the OpenZiti SDK: the dependency listing is wrong\n%s", deps)
	}

	// Umbra's plumbing is importable by the SDK but by nobody outside the repository.
	write("sneaky/sneaky.go", internalImport)
	out, err := goCmd("build", "./sneaky")
	if err == nil || !strings.Contains(out, "use of internal package") {
		t.Errorf("a third party's module imported github.com/umbra-mesh/umbra/internal/pki (err %v):\n%s", err, out)
	}
	if err := os.RemoveAll(filepath.Join(dir, "sneaky")); err != nil {
		t.Fatal(err)
	}
}

// TestSDKPublicAPI fails if an exported identifier of the SDK (or of the wire types and the domain package its
// API is made of) mentions a type of an internal package: code outside the repository could not name it, so it
// could not call that part of the API.
func TestSDKPublicAPI(t *testing.T) {
	pkgs := []string{rootModule + "/agentsdk", rootModule + "/agentsdk/api", rootModule + "/workgroups"}
	cmd := exec.Command("go", append([]string{"list", "-export", "-deps", "-json=ImportPath,Export"}, pkgs...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -export: %v", err)
	}
	exports := map[string]string{}
	for dec := json.NewDecoder(strings.NewReader(string(out))); ; {
		var p struct{ ImportPath, Export string }
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		exports[p.ImportPath] = p.Export
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		file, ok := exports[path]
		if !ok || file == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(file)
	})
	for _, path := range pkgs {
		pkg, err := imp.Import(path)
		if err != nil {
			t.Fatalf("import %s: %v", path, err)
		}
		n := 0
		for _, name := range pkg.Scope().Names() {
			obj := pkg.Scope().Lookup(name)
			if !obj.Exported() {
				continue
			}
			n++
			for _, bad := range internalTypes(obj) {
				t.Errorf("%s.%s mentions %s, which code outside the repository cannot name", pkg.Name(), name, bad)
			}
		}
		if n == 0 {
			t.Errorf("%s exports nothing: the check is not looking at the real package", path)
		}
	}
}

// internalTypes returns the named types of internal packages that obj's exported surface mentions: its type,
// and for a type, its exported fields and methods.
func internalTypes(obj types.Object) []string {
	var found []string
	seen := map[types.Type]bool{}
	var walk func(t types.Type)
	walk = func(t types.Type) {
		if t == nil || seen[t] {
			return
		}
		seen[t] = true
		switch t := t.(type) {
		case *types.Alias:
			walk(types.Unalias(t))
		case *types.Named:
			if p := t.Obj().Pkg(); p != nil && isInternal(p.Path()) {
				found = append(found, p.Path()+"."+t.Obj().Name())
			}
			if ta := t.TypeArgs(); ta != nil {
				for i := range ta.Len() {
					walk(ta.At(i))
				}
			}
		case *types.Pointer:
			walk(t.Elem())
		case *types.Slice:
			walk(t.Elem())
		case *types.Array:
			walk(t.Elem())
		case *types.Map:
			walk(t.Key())
			walk(t.Elem())
		case *types.Chan:
			walk(t.Elem())
		case *types.Signature:
			for i := range t.Params().Len() {
				walk(t.Params().At(i).Type())
			}
			for i := range t.Results().Len() {
				walk(t.Results().At(i).Type())
			}
		case *types.Struct:
			for i := range t.NumFields() {
				if f := t.Field(i); f.Exported() || f.Embedded() {
					walk(f.Type())
				}
			}
		case *types.Interface:
			for i := range t.NumMethods() {
				if m := t.Method(i); m.Exported() {
					walk(m.Type())
				}
			}
		}
	}
	walk(obj.Type())
	if tn, ok := obj.(*types.TypeName); ok {
		if named, ok := types.Unalias(tn.Type()).(*types.Named); ok {
			walk(named.Underlying())
			for i := range named.NumMethods() {
				if m := named.Method(i); m.Exported() {
					walk(m.Type())
				}
			}
		}
	}
	return found
}

func isInternal(path string) bool {
	return strings.HasSuffix(path, "/internal") || strings.Contains(path, "/internal/") || strings.HasPrefix(path, "internal/")
}
