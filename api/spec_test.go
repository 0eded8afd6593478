package api_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/zygote/zygote/api"
)

// The spec checker. Every test server of this package sits behind it, and
// it holds code and document together:
//   - a request the server answers on a route the document lacks fails the
//     test (only the catch-all's 404 "no route" is allowed there);
//   - a request on a path the document has, with a method it does not
//     have there, must be answered 405 method_not_allowed with an Error
//     body and an Allow header naming exactly the document's methods for
//     that path;
//   - a request the document rejects must be refused (an error status,
//     not 500);
//   - every response's status must be documented for its operation (a
//     success status explicitly, an error through `default`), and its body
//     must match the schema, with no field the schema does not declare
//     (objects are closed for the check) and no body where none is
//     documented.
// What it sees is recorded; at the end of a full run of the package
// (TestMain) every operation must have been called, every status it
// documents seen, an error seen on every operation that documents one,
// and every status and code the Error response lists seen somewhere.

// strictSpec is openapi.yaml as the checker reads it: the same document
// with every object schema closed (additionalProperties false unless it
// says otherwise), so an undocumented field in a response fails.
var strictSpec = sync.OnceValues(func() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.Spec())
	if err != nil {
		return nil, fmt.Errorf("load openapi.yaml: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("openapi.yaml is invalid: %w", err)
	}
	// /spec.json converts it with a strict YAML decoder (a key defined
	// twice is an error there, not a silent overwrite).
	if _, err := api.SpecJSON(); err != nil {
		return nil, fmt.Errorf("openapi.yaml as /spec.json serves it: %w", err)
	}
	seen := map[*openapi3.Schema]bool{}
	var closeSchema func(s *openapi3.SchemaRef)
	closeSchema = func(s *openapi3.SchemaRef) {
		if s == nil || s.Value == nil || seen[s.Value] {
			return
		}
		v := s.Value
		seen[v] = true
		if len(v.Properties) > 0 && v.AdditionalProperties.Has == nil && v.AdditionalProperties.Schema == nil {
			no := false
			v.AdditionalProperties.Has = &no
		}
		for _, p := range v.Properties {
			closeSchema(p)
		}
		closeSchema(v.Items)
		closeSchema(v.AdditionalProperties.Schema)
		for _, list := range [][]*openapi3.SchemaRef{v.OneOf, v.AnyOf, v.AllOf} {
			for _, x := range list {
				closeSchema(x)
			}
		}
	}
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				for _, mt := range op.RequestBody.Value.Content {
					closeSchema(mt.Schema)
				}
			}
			for _, r := range op.Responses.Map() {
				if r.Value != nil {
					for _, mt := range r.Value.Content {
						closeSchema(mt.Schema)
					}
				}
			}
		}
	}
	doc.Servers = nil // match any host
	return doc, nil
})

func init() {
	// Log lines are strings to the checker (the schema says so).
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
}

// coverage is what every checker of the package saw.
type coverage struct {
	mu sync.Mutex
	// statuses by operation ("GET /instances/{id}").
	statuses map[string]map[int]bool
	// codes: "409 invalid_state" of every error body.
	codes map[string]bool
}

var recorded = &coverage{statuses: map[string]map[int]bool{}, codes: map[string]bool{}}

func (c *coverage) add(op string, status int, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.statuses[op] == nil {
		c.statuses[op] = map[int]bool{}
	}
	c.statuses[op][status] = true
	if code != "" {
		c.codes[fmt.Sprintf("%d %s", status, code)] = true
	}
}

// errorStatusList reads the statuses and codes the Error response lists
// ("400 invalid_request; 409 invalid_state, name_conflict; …").
func errorStatusList(doc *openapi3.T) []string {
	r := doc.Components.Responses["Error"]
	if r == nil || r.Value == nil || r.Value.Description == nil {
		return nil
	}
	desc := strings.Join(strings.Fields(*r.Value.Description), " ")
	var out []string
	for _, m := range regexp.MustCompile(`(\d{3}) ([A-Za-z_]+(?:, [A-Za-z_]+)*)`).FindAllStringSubmatch(desc, -1) {
		for _, code := range strings.Split(m[2], ", ") {
			out = append(out, m[1]+" "+code)
		}
	}
	return out
}

// check lists what the package's tests never exercised.
func (c *coverage) check(doc *openapi3.T) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			key := method + " " + path
			seen := c.statuses[key]
			if len(seen) == 0 {
				missing = append(missing, key+": never called")
				continue
			}
			for status := range op.Responses.Map() {
				if status == "default" {
					continue
				}
				if n, _ := strconv.Atoi(status); !seen[n] {
					missing = append(missing, key+": documented status "+status+" never seen")
				}
			}
			if op.Responses.Default() != nil && !slices.ContainsFunc(slices.Collect(mapKeys(seen)), func(s int) bool { return s >= 400 }) {
				missing = append(missing, key+": documents errors, none seen")
			}
		}
	}
	list := errorStatusList(doc)
	if len(list) == 0 {
		missing = append(missing, "the Error response's description lists no status and code")
	}
	for _, sc := range list {
		if !c.codes[sc] {
			missing = append(missing, "error "+sc+" (listed by the Error response) never seen")
		}
	}
	sort.Strings(missing)
	return missing
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestMain runs the package's tests, then, on a full run (no -run or
// -skip), fails unless they covered the document.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	full := flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == ""
	if code == 0 && full {
		doc, err := strictSpec()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if missing := recorded.check(doc); len(missing) > 0 {
			fmt.Fprintln(os.Stderr, "FAIL: the tests do not cover openapi.yaml:\n\t"+strings.Join(missing, "\n\t"))
			code = 1
		}
	}
	os.Exit(code)
}

// specChecker validates every request and response that crosses a test
// server against openapi.yaml and records them in recorded.
type specChecker struct {
	t      testing.TB
	router routers.Router
}

func newSpecChecker(t testing.TB) *specChecker {
	doc, err := strictSpec()
	if err != nil {
		t.Fatal(err)
	}
	r, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &specChecker{t: t, router: r}
}

// capture records a response on its way out.
type capture struct {
	http.ResponseWriter
	status   int
	wrote    bool
	hijacked bool
	body     bytes.Buffer
}

func (c *capture) WriteHeader(s int) {
	if !c.wrote {
		c.status, c.wrote = s, true
	}
	c.ResponseWriter.WriteHeader(s)
}

func (c *capture) Write(p []byte) (int, error) {
	c.wrote = true
	c.body.Write(p)
	return c.ResponseWriter.Write(p)
}

func (c *capture) Flush() { c.ResponseWriter.(http.Flusher).Flush() }

// Hijack serves exec's WebSocket upgrade: the 101 is written on the
// hijacked connection.
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c.status, c.hijacked = http.StatusSwitchingProtocols, true
	return http.NewResponseController(c.ResponseWriter).Hijack()
}

func (c *capture) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (sc *specChecker) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		route, params, findErr := sc.router.FindRoute(r)
		var in *openapi3filter.RequestValidationInput
		var reqErr error
		if findErr == nil {
			in = &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
				Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
			reqErr = openapi3filter.ValidateRequest(r.Context(), in)
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		c := &capture{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(c, r)
		var errBody api.Error
		isError := c.status >= 400 && json.Unmarshal(c.body.Bytes(), &errBody) == nil
		if errors.Is(findErr, routers.ErrMethodNotAllowed) {
			sc.checkMethodNotAllowed(r, c)
			return
		}
		if findErr != nil {
			if c.status == http.StatusNotFound && errBody.Code == "not_found" && strings.HasPrefix(errBody.Message, "no route for") {
				return // the catch-all
			}
			sc.t.Errorf("%s %s -> %d: the server serves a route openapi.yaml lacks", r.Method, r.URL.Path, c.status)
			return
		}
		op := route.Method + " " + route.Path
		if reqErr != nil && (c.status < 400 || c.status == http.StatusInternalServerError) {
			sc.t.Errorf("%s %s -> %d: openapi.yaml rejects this request, the server must refuse it: %v", r.Method, r.URL, c.status, reqErr)
		}
		if err := validateResponse(r, in, c); err != nil {
			sc.t.Errorf("%s %s -> %d: response does not match openapi.yaml: %v (body %.300q)", r.Method, r.URL, c.status, err, c.body.String())
		}
		code := ""
		if isError {
			code = errBody.Code
			sc.checkListed(r, c.status, code)
		}
		recorded.add(op, c.status, code)
	})
}

// checkListed fails an error whose status and code the Error response
// does not list: a client reads the list to know what to expect.
func (sc *specChecker) checkListed(r *http.Request, status int, code string) {
	doc, _ := strictSpec()
	if !slices.Contains(errorStatusList(doc), fmt.Sprintf("%d %s", status, code)) {
		sc.t.Errorf("%s %s -> %d %s: the Error response of openapi.yaml does not list this status and code", r.Method, r.URL.Path, status, code)
	}
}

// specMethods are the methods openapi.yaml serves on r's path.
func (sc *specChecker) specMethods(r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodTrace} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, _, err := sc.router.FindRoute(probe); err == nil {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// checkMethodNotAllowed checks the answer to a method openapi.yaml does
// not have on a path it has: the server must say the route exists with
// other methods (405 method_not_allowed, Allow listing the document's).
func (sc *specChecker) checkMethodNotAllowed(r *http.Request, c *capture) {
	want := sc.specMethods(r)
	if c.status != http.StatusMethodNotAllowed {
		sc.t.Errorf("%s %s -> %d: openapi.yaml has this path only for %v; the server must answer 405", r.Method, r.URL.Path, c.status, want)
		return
	}
	var allow []string
	for _, m := range strings.Split(c.Header().Get("Allow"), ",") {
		if m = strings.TrimSpace(m); m != "" {
			allow = append(allow, m)
		}
	}
	sort.Strings(allow)
	if !slices.Equal(allow, want) {
		sc.t.Errorf("%s %s -> 405: Allow %q, openapi.yaml has %v on this path", r.Method, r.URL.Path, c.Header().Get("Allow"), want)
	}
	var body any
	if err := json.Unmarshal(c.body.Bytes(), &body); err != nil {
		sc.t.Errorf("%s %s -> 405: body is not JSON: %v", r.Method, r.URL.Path, err)
		return
	}
	doc, _ := strictSpec()
	if err := doc.Components.Schemas["Error"].Value.VisitJSON(body); err != nil {
		sc.t.Errorf("%s %s -> 405: body is not an Error: %v (body %.300q)", r.Method, r.URL.Path, err, c.body.String())
		return
	}
	var e api.Error
	json.Unmarshal(c.body.Bytes(), &e)
	if e.Code != "method_not_allowed" {
		sc.t.Errorf("%s %s -> 405: code %q, want method_not_allowed", r.Method, r.URL.Path, e.Code)
	}
	sc.checkListed(r, c.status, e.Code)
	recorded.add(r.Method+" (not in openapi.yaml) "+r.URL.Path, c.status, e.Code)
}

func validateResponse(r *http.Request, in *openapi3filter.RequestValidationInput, c *capture) error {
	responses := in.Route.Operation.Responses
	resp := responses.Status(c.status)
	if resp == nil {
		if c.status < 400 {
			return fmt.Errorf("status %d is not documented for this operation", c.status)
		}
		if resp = responses.Default(); resp == nil {
			return fmt.Errorf("error status %d, and the operation documents no error response", c.status)
		}
	}
	if c.hijacked {
		return nil // a WebSocket: no HTTP body
	}
	if len(resp.Value.Content) == 0 {
		if c.body.Len() > 0 {
			return fmt.Errorf("a body, where the document says none")
		}
		return nil
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: c.status, Header: c.Header(),
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(c.body.Bytes())
	return openapi3filter.ValidateResponse(r.Context(), out)
}
