package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// ServiceName is the overlay service the console is hosted on.
const ServiceName = "umbra-console"

// DialAttr is the overlay role attribute of the identities that may dial ServiceName: administrators.
const DialAttr = "umbra.console.dial"

// ErrNotFound is what a Source answers for something that does not exist or that the viewer may not see: the
// two are one answer, so that the console reveals nothing of other organisations.
var ErrNotFound = errors.New("console: not found")

// ErrForbidden is what a Source answers for an operation the viewer may not perform (for example an
// organisation's administrator verifying the whole chain).
var ErrForbidden = errors.New("console: forbidden")

// ErrInvalid is what a Source answers for a request it cannot carry out as asked (a reason missing, an identity
// that cannot suspend itself); its message says what to change.
var ErrInvalid = errors.New("console: invalid request")

// Viewer is the administrator a request comes from, as its SVID proved.
type Viewer struct {
	ID       string // SPIFFE ID
	Org      string
	Platform bool // the platform administrator: sees every organisation
}

// Org is one organisation on the overview.
type Org struct {
	Name      string
	Admin     string
	CreatedAt time.Time
}

// Identity is one workload identity on the overview.
type Identity struct {
	SPIFFEID   string
	Org        string
	Kind       string
	Name       string
	Admin      bool
	State      string // pending, enrolled, revoked
	EnrolledAt time.Time
	LastSeen   time.Time // the newest audit record it acted in, among the recent ones; zero when none
}

// Overview is what the viewer may see of the network.
type Overview struct {
	Orgs       []Org
	Workgroups []api.WorkgroupView
	Identities []Identity
}

// Query selects audit records. Empty fields match every record.
type Query struct {
	Actor   string // SPIFFE ID, exact
	Session string // session ID, exact
	Kind    string // exact, or a prefix ending in "." or "*" such as "envelope." or "mcp.*"
	Since   time.Time
	Until   time.Time
	After   uint64 // only records with a greater sequence
	Limit   int    // the newest Limit matches; 0 means 200
}

// AuditPage is the answer to a Query.
type AuditPage struct {
	Records []audit.Record // in stream order
	Last    uint64         // the stream's last sequence when the search ran: the cursor to follow on from
	Scanned uint64         // how many records were looked at
	Partial bool           // the search looked only at the newest records (Scanned of them)
}

// Source is the controller's state as the console reads it. Every method answers only what v may see.
type Source interface {
	Overview(ctx context.Context, v Viewer) (Overview, error)
	Sessions(ctx context.Context, v Viewer) ([]api.SessionView, error)
	// SessionAudit reconstructs one session from the audit and envelope streams (as `umbra audit session`).
	SessionAudit(ctx context.Context, v Viewer, id string) (api.SessionAudit, error)
	Audit(ctx context.Context, v Viewer, q Query) (AuditPage, error)
	Verify(ctx context.Context, v Viewer) (api.AuditReport, error)
	// Export writes the audit stream as JSON lines, ending in a signed checkpoint.
	Export(ctx context.Context, v Viewer, w io.Writer) error
	// Posture is the findings, the drift since the baseline and the inventory of what v administers (as
	// `umbra posture` and `umbra inventory`).
	Posture(ctx context.Context, v Viewer) (PostureView, error)
	// RecordBaseline records the inventory as the baseline later drift is measured against.
	RecordBaseline(ctx context.Context, v Viewer) (api.BaselineResponse, error)
	// Suspend suspends (or, with suspend false, resumes) the identity id: the kill switch, with a reason.
	Suspend(ctx context.Context, v Viewer, id, reason string, suspend bool) (api.SuspendResponse, error)
}

// PostureView is the posture page's data.
type PostureView struct {
	Report    api.PostureReport
	Inventory api.Inventory
}

// Config configures a Console.
type Config struct {
	// Source is the controller's state: the overview, sessions, live view, audit and posture pages.
	Source Source
	// Gateways, when set, serves the approvals and LLM usage pages (in the bridge, `umbra ui`, which reaches the
	// gateways as the viewer). Without it those pages say where they are served.
	Gateways Gateways
	// Viewer names the administrator behind a request, from the SVID it presented; an error refuses the request
	// (403) with the error's message.
	Viewer func(*http.Request) (Viewer, error)
	// Logger defaults to discarding.
	Logger *slog.Logger
	// LivePoll is how often the live view looks for new records; default 500 ms.
	LivePoll time.Duration
	// MaxLivePerViewer bounds one viewer's open live streams; default 4.
	MaxLivePerViewer int
}

// Console serves the pages.
type Console struct {
	cfg   Config
	log   *slog.Logger
	key   []byte // CSRF tokens
	pages map[string]*template.Template

	mu   sync.Mutex
	live map[string]int // open live streams per viewer
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// New checks cfg and parses the templates.
func New(cfg Config) (*Console, error) {
	if cfg.Source == nil && cfg.Gateways == nil || cfg.Viewer == nil {
		return nil, errors.New("console: Config needs a Source or Gateways, and a Viewer function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.LivePoll <= 0 {
		cfg.LivePoll = 500 * time.Millisecond
	}
	if cfg.MaxLivePerViewer <= 0 {
		cfg.MaxLivePerViewer = 4
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("console: csrf key: %w", err)
	}
	c := &Console{cfg: cfg, log: cfg.Logger, key: key, pages: map[string]*template.Template{}, live: map[string]int{}}
	for _, p := range []string{"overview", "sessions", "session", "audit", "verify", "live", "later", "error", "approvals", "usage", "posture"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", p, err)
		}
		c.pages[p] = t
	}
	return c, nil
}

// Handler serves the console. Every request is authorised by cfg.Viewer first.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	if c.cfg.Source != nil {
		mux.HandleFunc("GET /{$}", c.overview)
		mux.HandleFunc("GET /sessions", c.sessions)
		mux.HandleFunc("GET /sessions/{id}", c.session)
		mux.HandleFunc("GET /audit", c.auditSearch)
		mux.HandleFunc("POST /audit/verify", c.verify)
		mux.HandleFunc("GET /audit/export", c.export)
		mux.HandleFunc("GET /live", c.livePage)
		mux.HandleFunc("GET /live/events", c.liveEvents)
		mux.HandleFunc("GET /posture", c.posture)
		mux.HandleFunc("POST /posture/baseline", c.baseline)
		mux.HandleFunc("POST /posture/suspend", c.suspend(true))
		mux.HandleFunc("POST /posture/resume", c.suspend(false))
	}
	if c.cfg.Gateways != nil {
		mux.HandleFunc("GET /approvals", c.approvals)
		mux.HandleFunc("POST /approvals/calls/{id}/{verb}", c.decideCall)
		mux.HandleFunc("POST /approvals/versions/{verb}", c.decideVersion)
		mux.HandleFunc("GET /usage", c.usage)
	} else {
		mux.HandleFunc("GET /approvals", c.later("Approvals", "Held MCP calls and quarantined definitions live at the MCP gateway, which this page reaches as you: open the console through `umbra ui`, whose bridge serves this page."))
		mux.HandleFunc("GET /usage", c.later("LLM usage", "Usage and budgets are kept by the LLM gateway, which this page reaches as you: open the console through `umbra ui`, whose bridge serves this page."))
	}
	return c.guard(mux)
}

type viewerKey struct{}

// guard authorises the viewer, sets the CSRF cookie, checks the token of every POST and sets the headers every
// page carries.
func (c *Console) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin") // not no-referrer: with it, browsers send "Origin: null" on a form POST
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		v, err := c.cfg.Viewer(r)
		if err != nil {
			c.fail(w, r, Viewer{}, http.StatusForbidden, err.Error())
			return
		}
		nonce := ""
		if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) >= 22 {
			nonce = ck.Value
		}
		if r.Method == http.MethodPost {
			if !c.sameOrigin(r) || nonce == "" || !hmac.Equal([]byte(r.PostFormValue("csrf")), []byte(c.token(v, nonce))) {
				c.fail(w, r, v, http.StatusForbidden, "the form's security token is missing or stale: reload the page and submit again")
				return
			}
		}
		if nonce == "" {
			b := make([]byte, 18)
			_, _ = rand.Read(b)
			nonce = base64.RawURLEncoding.EncodeToString(b)
			http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: nonce, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		}
		ctx := context.WithValue(r.Context(), viewerKey{}, viewerCtx{v: v, csrf: c.token(v, nonce)})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

const csrfCookie = "umbra_console_csrf"

type viewerCtx struct {
	v    Viewer
	csrf string
}

// token binds the CSRF token to the viewer's identity and the browser's cookie.
func (c *Console) token(v Viewer, nonce string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(v.ID))
	m.Write([]byte{0})
	m.Write([]byte(nonce))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// sameOrigin refuses a POST whose Origin (when the browser sends one) is not the console's own.
func (c *Console) sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func viewerOf(r *http.Request) viewerCtx {
	v, _ := r.Context().Value(viewerKey{}).(viewerCtx)
	return v
}

// page is what every template gets.
type page struct {
	Title  string
	Nav    string
	Viewer Viewer
	CSRF   string
	Data   any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name, title, nav string, data any) {
	vc := viewerOf(r)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.pages[name].Execute(w, page{Title: title, Nav: nav, Viewer: vc.v, CSRF: vc.csrf, Data: data}); err != nil {
		c.log.Warn("console page failed to render", "page", name, "err", err)
	}
}

// fail answers with an error page saying what went wrong and what to do.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, v Viewer, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = c.pages["error"].Execute(w, page{Title: http.StatusText(status), Viewer: v, Data: msg})
}

// sourceFail answers a Source error: not found, forbidden, or an internal error logged under an ID.
func (c *Console) sourceFail(w http.ResponseWriter, r *http.Request, err error) {
	v := viewerOf(r).v
	switch {
	case errors.Is(err, ErrNotFound):
		c.fail(w, r, v, http.StatusNotFound, "not found (or not yours to see)")
	case errors.Is(err, ErrForbidden):
		c.fail(w, r, v, http.StatusForbidden, err.Error())
	case errors.Is(err, ErrInvalid):
		c.fail(w, r, v, http.StatusBadRequest, err.Error())
	case r.Context().Err() != nil:
	default:
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		id := base64.RawURLEncoding.EncodeToString(b)
		c.log.Error("console request failed", "error_id", id, "path", r.URL.Path, "err", err)
		c.fail(w, r, v, http.StatusInternalServerError, "the controller could not answer (error "+id+" in its log); try again")
	}
}

func (c *Console) later(title, text string) http.HandlerFunc {
	nav := map[string]string{"Approvals": "approvals", "LLM usage": "usage", "Posture": "posture"}[title]
	return func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusOK, "later", title, nav, text)
	}
}
