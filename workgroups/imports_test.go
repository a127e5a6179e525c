package workgroups

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the package importable by both the controller and the
// agent SDK: the standard library, spiffeid and cedar-go only, and nothing
// that does I/O, keeps time or logs.
func TestImports(t *testing.T) {
	allowed := map[string]bool{
		"github.com/spiffe/go-spiffe/v2/spiffeid":      true,
		"github.com/cedar-policy/cedar-go":             true,
		"github.com/umbra-mesh/umbra/workgroups/authz": true,
	}
	forbidden := map[string]bool{"os": true, "net": true, "net/http": true, "log": true, "log/slog": true, "sync": true, "crypto/rand": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := filepath.Glob("authz/*.go")
	files = append(files, sub...)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first := strings.Split(path, "/")[0]
			std := !strings.Contains(first, ".")
			if forbidden[path] || !std && !allowed[path] {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}
