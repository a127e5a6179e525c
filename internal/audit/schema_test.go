package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
)

// schemaPath is the public JSON Schema of an audit record, relative to this package.
const schemaPath = "../../docs/audit-record.schema.json"

func loadSchema(t *testing.T) (*jsonschema.Resolved, []string) {
	t.Helper()
	b, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var s jsonschema.Schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%s: %v", schemaPath, err)
	}
	rs, err := s.Resolve(nil)
	if err != nil {
		t.Fatalf("%s does not resolve: %v", schemaPath, err)
	}
	var head struct {
		ID      string `json:"$id"`
		Version string `json:"version"`
		Defs    struct {
			Kind struct {
				Enum []string `json:"enum"`
			} `json:"kind"`
		} `json:"$defs"`
		Kinds map[string]string `json:"x-kinds"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		t.Fatal(err)
	}
	if head.ID == "" || head.Version == "" {
		t.Errorf("%s: want $id and version", schemaPath)
	}
	if len(head.Defs.Kind.Enum) == 0 {
		t.Fatalf("%s: no kinds in $defs.kind.enum", schemaPath)
	}
	for _, k := range head.Defs.Kind.Enum {
		if head.Kinds[k] == "" {
			t.Errorf("%s: kind %q has no description in x-kinds", schemaPath, k)
		}
	}
	if len(head.Kinds) != len(head.Defs.Kind.Enum) {
		t.Errorf("%s: x-kinds describes %d kinds, the enum lists %d", schemaPath, len(head.Kinds), len(head.Defs.Kind.Enum))
	}
	return rs, head.Defs.Kind.Enum
}

// sourceKinds finds every record kind the module's code writes, with where it is written: the Kind of every
// audit.Record literal (a string, or a constant), every string constant named Kind… or kind… (the convention
// for record kinds), and every string assigned to a variable named kind in a package that writes records.
func sourceKinds(t *testing.T) map[string]string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	// Strings given to a variable named kind count in a package that writes records.
	type posLit struct {
		fset *token.FileSet
		pos  token.Pos
		lit  *ast.BasicLit
	}
	assigned := map[string][]posLit{}
	writers := map[string]bool{}
	add := func(fset *token.FileSet, pos token.Pos, lit *ast.BasicLit) {
		if lit == nil || lit.Kind != token.STRING {
			return
		}
		v, err := strconv.Unquote(lit.Value)
		if err != nil || v == "" {
			return
		}
		if _, ok := found[v]; !ok {
			p := fset.Position(pos)
			rel, _ := filepath.Rel(root, p.Filename)
			found[v] = rel + ":" + strconv.Itoa(p.Line)
		}
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				if !isRecordType(n.Type, f.Name.Name) {
					return true
				}
				for _, el := range n.Elts {
					if kv, ok := el.(*ast.KeyValueExpr); ok && isIdent(kv.Key, "Kind") {
						lit, _ := kv.Value.(*ast.BasicLit)
						add(fset, kv.Pos(), lit)
					}
				}
			case *ast.ValueSpec:
				for i, name := range n.Names {
					if i < len(n.Values) && isKindName(name.Name) {
						lit, _ := n.Values[i].(*ast.BasicLit)
						add(fset, name.Pos(), lit)
					}
				}
			case *ast.AssignStmt:
				for i, lhs := range n.Lhs {
					if lit, ok := n.Rhs[min(i, len(n.Rhs)-1)].(*ast.BasicLit); ok && isIdent(lhs, "kind") {
						dir := filepath.Dir(path)
						assigned[dir] = append(assigned[dir], posLit{fset, lhs.Pos(), lit})
					}
				}
			}
			if c, ok := n.(*ast.CompositeLit); ok && isRecordType(c.Type, f.Name.Name) {
				writers[filepath.Dir(path)] = true
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir, lits := range assigned {
		if writers[dir] {
			for _, l := range lits {
				add(l.fset, l.pos, l.lit)
			}
		}
	}
	return found
}

func isRecordType(e ast.Expr, pkg string) bool {
	switch e := e.(type) {
	case *ast.SelectorExpr:
		return isIdent(e.X, "audit") && e.Sel.Name == "Record"
	case *ast.Ident:
		return pkg == "audit" && e.Name == "Record"
	}
	return false
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// isKindName reports whether a constant's name marks it as a record kind: Kind or kind, then an upper-case letter.
func isKindName(name string) bool {
	rest, ok := strings.CutPrefix(name, "Kind")
	if !ok {
		rest, ok = strings.CutPrefix(name, "kind")
	}
	return ok && rest != "" && 'A' <= rest[0] && rest[0] <= 'Z'
}

// TestSchemaListsEveryKind fails when the code writes a record kind the schema does not list, or the schema
// lists a kind nothing writes any more. A new kind goes into docs/audit-record.schema.json (the enum, x-kinds
// and its rule) and a sample into testdata/schema-records.jsonl.
func TestSchemaListsEveryKind(t *testing.T) {
	_, kinds := loadSchema(t)
	inSchema := map[string]bool{}
	for _, k := range kinds {
		inSchema[k] = true
	}
	inCode := sourceKinds(t)
	if len(inCode) < 10 {
		t.Fatalf("found only %d kinds in the source: the scan is broken", len(inCode))
	}
	for k, where := range inCode {
		if !inSchema[k] {
			t.Errorf("%s writes kind %q, which %s does not list", where, k, schemaPath)
		}
	}
	for _, k := range kinds {
		if _, ok := inCode[k]; !ok {
			t.Errorf("%s lists kind %q, which no code writes", schemaPath, k)
		}
	}
}

// schemaSamples reads one representative record of each kind, shaped as the code that writes it shapes it, and
// chains them as Log.Append would: each normalized, validated and hashed by this package's own code.
func schemaSamples(t *testing.T) []Record {
	t.Helper()
	f, err := os.Open("testdata/schema-records.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Record
	prev := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, MaxRecordSize)
	for sc.Scan() {
		var r Record
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("sample %d: %v", len(out)+1, err)
		}
		if err := normalize(&r, time.Now()); err != nil {
			t.Fatalf("sample %s: %v", r.Kind, err)
		}
		r.Seq, r.Prev = uint64(len(out)+1), prev
		if r.Hash, err = hashOf(r); err != nil {
			t.Fatal(err)
		}
		if err := validate(r); err != nil {
			t.Fatalf("sample %s is not a valid record: %v", r.Kind, err)
		}
		out = append(out, r)
		prev = r.Hash
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if err := VerifyRecords(out); err != nil {
		t.Fatalf("samples do not chain: %v", err)
	}
	return out
}

// asInstance is a record as the schema sees it: its JSON encoding, decoded into plain values.
func asInstance(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEveryKindValidates validates a record of every kind the schema lists against it.
func TestEveryKindValidates(t *testing.T) {
	rs, kinds := loadSchema(t)
	seen := map[string]bool{}
	for _, r := range schemaSamples(t) {
		seen[r.Kind] = true
		if err := rs.Validate(asInstance(t, r)); err != nil {
			t.Errorf("%s record does not validate: %v", r.Kind, err)
		}
	}
	var missing []string
	for _, k := range kinds {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("no sample record in testdata/schema-records.jsonl for %s", strings.Join(missing, ", "))
	}
}

// TestSchemaRejects checks that the schema is not vacuous: records a reader must not accept fail it.
func TestSchemaRejects(t *testing.T) {
	rs, _ := loadSchema(t)
	samples := schemaSamples(t)
	byKind := map[string]Record{}
	for _, r := range samples {
		byKind[r.Kind] = r
	}
	mutate := func(kind string, f func(m map[string]any)) any {
		m := asInstance(t, byKind[kind]).(map[string]any)
		f(m)
		return m
	}
	cases := map[string]any{
		"unknown kind":              mutate("discover", func(m map[string]any) { m["kind"] = "discover.everything" }),
		"no actor":                  mutate("discover", func(m map[string]any) { delete(m, "actor") }),
		"actor not a SPIFFE ID":     mutate("discover", func(m map[string]any) { m["actor"] = "planner" }),
		"unknown field":             mutate("discover", func(m map[string]any) { m["severity"] = "high" }),
		"decision neither":          mutate("discover", func(m map[string]any) { m["decision"] = "maybe" }),
		"short hash":                mutate("discover", func(m map[string]any) { m["hash"] = "abc" }),
		"rejected envelope allowed": mutate("envelope.rejected", func(m map[string]any) { m["decision"] = "allow" }),
		"transition without data":   mutate("session.transition", func(m map[string]any) { delete(m, "data") }),
		"transition to nowhere": mutate("session.transition", func(m map[string]any) {
			m["data"].(map[string]any)["to"] = "paused"
		}),
		"checkpoint without signature": mutate("audit.checkpoint", func(m map[string]any) {
			delete(m["data"].(map[string]any), "sig")
		}),
		"accepted envelope without session": mutate("envelope.accepted", func(m map[string]any) { delete(m, "session") }),
		"diagnostic effect neither": mutate("mcp.denied", func(m map[string]any) {
			m["diagnostic"].(map[string]any)["effect"] = "maybe"
		}),
		"diagnostic policy not a string": mutate("mcp.denied", func(m map[string]any) {
			m["diagnostic"].(map[string]any)["policies"] = []any{map[string]any{"id": "p"}}
		}),
		"llm outcome without request id": mutate("llm.outcome", func(m map[string]any) {
			delete(m["data"].(map[string]any), "request_id")
		}),
	}
	for name, inst := range cases {
		if err := rs.Validate(inst); err == nil {
			t.Errorf("%s: validates, want an error", name)
		}
	}
}
