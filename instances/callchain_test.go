package instances

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// callGraph is the package's static call graph, by function name
// ("Manager.restore", "instanceLock.lock", "forkNamesOf", or a
// package-level var such as "recoveryRules"), read from the source: an
// edge is any reference from one body to a function, method (through the
// receiver, a method expression, or a method name declared on one type
// among the package's other types) or package-level var of this package.
// Manager methods are reached only through the receiver or a method
// expression, so an rt.vm.Close() is not mistaken for Manager.Close.
type callGraph struct {
	file  map[string]string
	edges map[string]map[string]bool
}

func parsePackage(t *testing.T) callGraph {
	t.Helper()
	fset := token.NewFileSet()
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	g := callGraph{file: map[string]string{}, edges: map[string]map[string]bool{}}
	methodOwners := map[string][]string{} // method name -> receiver types
	type body struct {
		name, recv string
		node       ast.Node
	}
	var bodies []body
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				name, recv := d.Name.Name, ""
				if d.Recv != nil {
					typ := d.Recv.List[0].Type
					if s, ok := typ.(*ast.StarExpr); ok {
						typ = s.X
					}
					typeName := typ.(*ast.Ident).Name
					methodOwners[d.Name.Name] = append(methodOwners[d.Name.Name], typeName)
					name = typeName + "." + d.Name.Name
					if len(d.Recv.List[0].Names) > 0 {
						recv = d.Recv.List[0].Names[0].Name
					}
				}
				g.file[name] = p
				if d.Body != nil {
					bodies = append(bodies, body{name, recv, d.Body})
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					if vs, ok := s.(*ast.ValueSpec); ok && d.Tok == token.VAR {
						for _, n := range vs.Names {
							g.file[n.Name] = p
							bodies = append(bodies, body{n.Name, "", vs})
						}
					}
				}
			}
		}
	}
	for _, b := range bodies {
		out := map[string]bool{}
		ast.Inspect(b.node, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				sel := n.Sel.Name
				x := n.X
				if p, ok := x.(*ast.ParenExpr); ok {
					x = p.X
				}
				if s, ok := x.(*ast.StarExpr); ok {
					x = s.X
				}
				if id, ok := x.(*ast.Ident); ok && (id.Name == b.recv && b.recv != "" || id.Name == "Manager") {
					if _, ok := g.file["Manager."+sel]; ok && (id.Name == "Manager" || strings.HasPrefix(b.name, "Manager.")) {
						out["Manager."+sel] = true
						return true
					}
				}
				if id, ok := x.(*ast.Ident); ok && id.Obj == nil && g.file[id.Name] == "" {
					return true // a selector on an imported package
				}
				// A method on a value of another type: resolved by name
				// when one of the package's other types declares it.
				var owners []string
				for _, o := range methodOwners[sel] {
					if o != "Manager" {
						owners = append(owners, o)
					}
				}
				if len(owners) == 1 {
					out[owners[0]+"."+sel] = true
				}
			case *ast.Ident:
				if _, ok := g.file[n.Name]; ok && n.Obj == nil {
					out[n.Name] = true
				}
				if n.Obj != nil && n.Obj.Kind == ast.Fun {
					out[n.Name] = true
				}
			}
			return true
		})
		delete(out, b.name)
		for k := range out {
			if _, ok := g.file[k]; !ok {
				delete(out, k)
			}
		}
		g.edges[b.name] = out
	}
	return g
}

func (g callGraph) reach(from string) map[string]bool {
	seen := map[string]bool{from: true}
	stack := []string{from}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for m := range g.edges[n] {
			if !seen[m] {
				seen[m] = true
				stack = append(stack, m)
			}
		}
	}
	return seen
}

// TestReconcileNeverReturnsToAFileItLeft: every call chain from Reconcile
// leaves a file for good once it leaves it (issue 8: the crash rules live
// beside their operations and the reconcile only dispatches). Formally: for
// every function u reachable from Reconcile and every edge u -> v into
// another file, no function of u's file is reachable from v.
func TestReconcileNeverReturnsToAFileItLeft(t *testing.T) {
	g := parsePackage(t)
	if g.file["Manager.Reconcile"] != "reconcile.go" || len(g.edges["recoveryRules"]) < 10 {
		t.Fatalf("the call graph misses the reconcile: Reconcile in %q, recoveryRules -> %v", g.file["Manager.Reconcile"], g.edges["recoveryRules"])
	}
	var problems []string
	for u := range g.reach("Manager.Reconcile") {
		for v := range g.edges[u] {
			if g.file[v] == g.file[u] {
				continue
			}
			for w := range g.reach(v) {
				if g.file[w] == g.file[u] {
					problems = append(problems, u+" ("+g.file[u]+") -> "+v+" ("+g.file[v]+") -> ... -> "+w)
				}
			}
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error("a chain from Reconcile comes back into a file it left: " + p)
	}
}
