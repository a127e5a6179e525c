package controller

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/workgroups"
)

// govWorld is a controller's governance (stores, recorder, refusal limiter) on an embedded NATS server whose data
// directory outlives it, without the overlay: enough to call propose, answer and close as the API would.
type govWorld struct {
	t        *testing.T
	dir      string
	s        *Server
	ns       *natsd.Server
	cancel   context.CancelFunc
	tasks    sync.WaitGroup // the envelope recorder and the refusal summariser
	consumer caller
	provider caller
	ad       workgroups.Advertisement
}

var (
	worldTD       = spiffeid.RequireTrustDomainFromString("umbra.local")
	worldAdmin    = spiffeid.RequireFromSegments(worldTD, "acme", "user", "alice")
	worldConsumer = spiffeid.RequireFromSegments(worldTD, "acme", "agent", "buyer")
	worldProvider = spiffeid.RequireFromSegments(worldTD, "acme", "agent", "seller")
)

// openGovWorld opens the stores in dir with cfg (DataDir is set to dir), and on first use creates a workgroup
// with a consumer and a provider, and an advertisement that accepts proposals within its terms and holds the
// others for the provider.
func openGovWorld(t *testing.T, dir string, cfg Config) *govWorld {
	t.Helper()
	cfg.DataDir = dir
	cfg, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := natsd.Start(natsd.Config{StoreDir: dir, SyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	w := &govWorld{t: t, dir: dir, ns: ns}
	t.Cleanup(w.close)
	nc, err := ns.Connect("gov-test")
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
	defer ocancel()
	controllerID := spiffeid.RequireFromSegments(worldTD, "umbra", "controller", "api")
	s := &Server{cfg: cfg, log: cfg.Logger, td: worldTD, controllerID: controllerID}
	if s.ids, err = openIdentityStore(octx, js); err != nil {
		t.Fatal(err)
	}
	if s.gov, err = openGovernance(ctx, js, cfg.Logger, controllerID.String(), cfg); err != nil {
		t.Fatal(err)
	}
	w.s = s
	w.tasks.Add(2)
	go func() {
		defer w.tasks.Done()
		s.gov.rec.run(ctx)
	}()
	go func() {
		defer w.tasks.Done()
		s.gov.summariseRefusals(ctx, cfg.Logger)
	}()
	w.consumer = caller{id: worldConsumer, rec: identityRecord{SPIFFEID: worldConsumer.String(), Org: "acme", Kind: "agent", Name: "buyer"}}
	w.provider = caller{id: worldProvider, rec: identityRecord{SPIFFEID: worldProvider.String(), Org: "acme", Kind: "agent", Name: "seller"}}

	ads, err := s.gov.ads.all(octx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ads) > 0 {
		w.ad = ads[0]
		return w
	}
	now := time.Now().UTC()
	wgID := workgroups.WorkgroupID{Org: "acme", Name: "deals"}
	wg, err := workgroups.NewWorkgroup(wgID, workgroups.ScopeIntraOrg, worldAdmin, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []spiffeid.ID{worldConsumer, worldProvider} {
		if err := wg.AddMember(worldAdmin, id, workgroups.RoleMember, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.gov.wgs.create(octx, wgKey(wgID), wg); err != nil {
		t.Fatal(err)
	}
	adID, err := workgroups.NewAdvertisementID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	w.ad = workgroups.Advertisement{ID: adID, Provider: worldProvider, Workgroups: []workgroups.WorkgroupID{wgID},
		Card: workgroups.AgentCard{Name: "seller", Version: "1", MessageTypes: []string{"quote.*"}},
		Terms: workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 10, AllowedMessageTypes: []string{"quote.*"},
			MaxEnvelopeBytes: 4096, HoldForProvider: true}}
	if err := s.gov.ads.create(octx, adID.String(), w.ad); err != nil {
		t.Fatal(err)
	}
	return w
}

// close stops the world as a crash would leave it: the data directory stays.
func (w *govWorld) close() {
	if w.ns == nil {
		return
	}
	w.cancel()
	w.tasks.Wait()
	w.ns.Shutdown()
	w.ns = nil
}

// propose proposes a session on the world's advertisement as the consumer; held asks for more than the terms,
// so that the proposal waits for the provider.
func (w *govWorld) propose(ctx context.Context, held bool) (workgroups.Session, error) {
	p := workgroups.Proposal{}
	if held {
		p.MaxMessages = 100
	}
	resp, err := w.s.propose(ctx, w.consumer, api.ProposeRequest{Advertisement: w.ad.ID.String(), Proposal: p})
	return resp.Session, err
}

// mustPropose proposes and checks the session's state.
func (w *govWorld) mustPropose(ctx context.Context, held bool) workgroups.Session {
	w.t.Helper()
	sess, err := w.propose(ctx, held)
	if err != nil {
		w.t.Fatalf("propose (held %v): %v", held, err)
	}
	want := workgroups.StateAccepted
	if held {
		want = workgroups.StateHeld
	}
	if sess.State != want {
		w.t.Fatalf("proposal in state %s, want %s", sess.State, want)
	}
	return sess
}

// refusedWith asserts err is the 429 refusal with code, in one line that names the way out.
func refusedWith(t *testing.T, err error, code string) {
	t.Helper()
	var f *fault
	if !errors.As(err, &f) {
		t.Fatalf("propose: %v, want a %s refusal", err, code)
	}
	if f.status != http.StatusTooManyRequests || f.code != code || strings.Contains(f.message, "\n") ||
		!strings.Contains(f.message, "ask the operator to raise the limit") {
		t.Fatalf("refusal %d %s %q, want 429 %s in one line saying what to do", f.status, f.code, f.message, code)
	}
}

// openSessions counts the consumer's stored sessions that are not over, and those awaiting the provider.
func (w *govWorld) openSessions(ctx context.Context) (open, pending int) {
	w.t.Helper()
	all, err := w.s.gov.sessions.all(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, sess := range all {
		if sess.Consumer == worldConsumer && !sess.State.Terminal() {
			open++
			if pendingState(sess.State) {
				pending++
			}
		}
	}
	return open, pending
}

func TestSessionCapsRefuseProposalsOverTheCap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := openGovWorld(t, t.TempDir(), Config{MaxOpenSessions: 5, MaxPendingProposals: 2})

	held := []workgroups.Session{w.mustPropose(ctx, true), w.mustPropose(ctx, true)}
	_, err := w.propose(ctx, true)
	refusedWith(t, err, api.CodeTooManyProposals)
	var accepted []workgroups.Session
	for range 3 {
		accepted = append(accepted, w.mustPropose(ctx, false))
	}
	_, err = w.propose(ctx, false)
	refusedWith(t, err, api.CodeTooManySessions)
	if open, pending := w.openSessions(ctx); open != 5 || pending != 2 {
		t.Fatalf("%d open sessions (%d pending) stored, want 5 (2)", open, pending)
	}

	// Closing a session gives its place back at once.
	if _, err := w.s.closeByCaller(ctx, w.consumer, accepted[0].ID.String(), "done"); err != nil {
		t.Fatal(err)
	}
	w.mustPropose(ctx, false)
	// The provider accepting a held proposal leaves it open but no longer pending: the open cap still binds.
	if _, err := w.s.answerSession(ctx, w.provider, held[0].ID.String(), true, "ok"); err != nil {
		t.Fatal(err)
	}
	_, err = w.propose(ctx, true)
	refusedWith(t, err, api.CodeTooManySessions)
	// Rejecting one makes room for a held proposal again.
	if _, err := w.s.answerSession(ctx, w.provider, held[1].ID.String(), false, "no"); err != nil {
		t.Fatal(err)
	}
	w.mustPropose(ctx, true)

	// Each refusal is in the audit trail, as the consumer's, with the code.
	refusals := map[string]int{}
	if _, err := w.s.gov.audit.Scan(ctx, 0, func(r audit.Record) error {
		if r.Kind == "session.propose" && r.Decision == audit.DecisionDeny && r.Actor == worldConsumer.String() {
			code, _, _ := strings.Cut(r.Reason, ":")
			refusals[code]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if refusals[api.CodeTooManyProposals] != 1 || refusals[api.CodeTooManySessions] != 2 {
		t.Fatalf("refusals recorded: %v, want 1 %s and 2 %s", refusals, api.CodeTooManyProposals, api.CodeTooManySessions)
	}
}

// TestSessionCapsHoldUnderRace sends 50 proposals at once: exactly the cap of them succeed.
func TestSessionCapsHoldUnderRace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const max, racers = 10, 50
	w := openGovWorld(t, t.TempDir(), Config{MaxOpenSessions: max, MaxPendingProposals: max})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, refused int
	var other []error
	start := make(chan struct{})
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := w.propose(ctx, i%2 == 0)
			var f *fault
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.As(err, &f) && f.status == http.StatusTooManyRequests:
				refused++
			default:
				other = append(other, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(other) > 0 || ok != max || refused != racers-max {
		t.Fatalf("%d proposals succeeded, %d refused over the cap, other errors %v; want %d, %d, none", ok, refused, other, max, racers-max)
	}
	if open, _ := w.openSessions(ctx); open != max {
		t.Fatalf("%d open sessions stored, want %d", open, max)
	}
}

// TestSessionCapsSurviveRestart fills the cap, restarts the stores on the same data directory, and checks that
// the count came back from the store; also when the count record is lost, or lags behind a session that ended.
func TestSessionCapsSurviveRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg := Config{MaxOpenSessions: 3}
	w := openGovWorld(t, dir, cfg)
	var sessions []workgroups.Session
	for range 3 {
		sessions = append(sessions, w.mustPropose(ctx, false))
	}
	w.close()

	w = openGovWorld(t, dir, cfg)
	_, err := w.propose(ctx, false)
	refusedWith(t, err, api.CodeTooManySessions)

	// A data directory whose sessions predate the count: it is rebuilt from the stored sessions.
	if err := w.s.ids.quotas.kv.Purge(ctx, idKey(worldConsumer)); err != nil {
		t.Fatal(err)
	}
	_, err = w.propose(ctx, false)
	refusedWith(t, err, api.CodeTooManySessions)

	// A session that ended without its count being updated (a crash in between) is found when the cap is hit.
	if _, err := w.s.gov.sessions.update(ctx, sessions[0].ID.String(), func(ss *workgroups.Session) error {
		return ss.Close(worldConsumer, workgroups.CloseByConsumer, time.Now().UTC(), "closed behind the count's back")
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.ids.quotas.update(ctx, idKey(worldConsumer), func(q *sessionQuota) error {
		q.Checked = time.Time{}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	w.mustPropose(ctx, false)
	_, err = w.propose(ctx, false)
	refusedWith(t, err, api.CodeTooManySessions)
	if open, _ := w.openSessions(ctx); open != 3 {
		t.Fatalf("%d open sessions stored, want 3", open)
	}
}

func TestSessionCapConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg               Config
		wantOpen, wantPen int
		wantErr           string
	}{
		{cfg: Config{}, wantOpen: 256, wantPen: 64},
		{cfg: Config{MaxOpenSessions: 7, MaxPendingProposals: 3}, wantOpen: 7, wantPen: 3},
		{cfg: Config{MaxOpenSessions: -1}, wantErr: "MaxOpenSessions -1 is negative"},
		{cfg: Config{MaxPendingProposals: -1}, wantErr: "MaxPendingProposals -1 is negative"},
		{cfg: Config{AuditMaxBytes: -1}, wantErr: "AuditMaxBytes -1 is negative"},
		{cfg: Config{EnvelopeMaxBytes: -1}, wantErr: "EnvelopeMaxBytes -1 is negative"},
	} {
		t.Run(fmt.Sprint(tc.cfg.MaxOpenSessions, tc.cfg.MaxPendingProposals, tc.cfg.AuditMaxBytes, tc.cfg.EnvelopeMaxBytes), func(t *testing.T) {
			tc.cfg.DataDir = "x"
			got, err := tc.cfg.withDefaults()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.MaxOpenSessions != tc.wantOpen || got.MaxPendingProposals != tc.wantPen ||
				got.AuditMaxBytes != audit.DefaultMaxBytes {
				t.Fatalf("got %d open, %d pending, audit %d bytes, err %v", got.MaxOpenSessions, got.MaxPendingProposals, got.AuditMaxBytes, err)
			}
		})
	}
}

// TestStreamLimitsFollowConfig checks that the configured byte limits reach the audit and envelope streams, and
// that a raised limit applies to an existing data directory at the next start.
func TestStreamLimitsFollowConfig(t *testing.T) {
	dir := t.TempDir()
	limits := func(w *govWorld) (auditMax, envMax int64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nc, err := w.ns.Connect("limits-test")
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		for name, into := range map[string]*int64{audit.DefaultStream: &auditMax, envelopeStream: &envMax} {
			st, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			*into = st.CachedInfo().Config.MaxBytes
		}
		return auditMax, envMax
	}
	w := openGovWorld(t, dir, Config{AuditMaxBytes: 48 << 20, EnvelopeMaxBytes: 40 << 20})
	if a, e := limits(w); a != 48<<20 || e != 40<<20 {
		t.Fatalf("stream limits %d and %d bytes, want %d and %d", a, e, 48<<20, 40<<20)
	}
	w.close()
	w = openGovWorld(t, dir, Config{AuditMaxBytes: 96 << 20, EnvelopeMaxBytes: 80 << 20})
	if a, e := limits(w); a != 96<<20 || e != 80<<20 {
		t.Fatalf("after a restart with raised limits: %d and %d bytes, want %d and %d", a, e, 96<<20, 80<<20)
	}
}

// TestQuotaProposalRateRefusesPastTheLimit proposes and closes at once, as a member churning sessions would:
// the caps never bind, the rate does, with a 429 whose Retry-After is the rest of the window, recorded as a
// refusal; once the window has passed, proposals are admitted again.
func TestQuotaProposalRateRefusesPastTheLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const limit = 5
	w := openGovWorld(t, t.TempDir(), Config{ProposalsPerMinute: limit, MaxOpenSessions: 1})
	for range limit {
		sess := w.mustPropose(ctx, false)
		if _, err := w.s.closeByCaller(ctx, w.consumer, sess.ID.String(), "done"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := w.propose(ctx, false)
	var f *fault
	if !errors.As(err, &f) || f.status != http.StatusTooManyRequests || f.code != api.CodeProposalRateLimited ||
		strings.Contains(f.message, "\n") || !strings.Contains(f.message, "--proposals-per-minute") ||
		f.retryAfter <= 0 || f.retryAfter > proposalWindow {
		t.Fatalf("proposal %d in a minute: %v (%+v), want 429 %s with a Retry-After within the window", limit+1, err, f, api.CodeProposalRateLimited)
	}
	// The HTTP answer carries Retry-After in whole seconds, rounded up.
	rec := httptest.NewRecorder()
	w.s.fail(rec, httptest.NewRequest(http.MethodPost, api.PathSessions, nil), err)
	wantSecs := strconv.Itoa(int(math.Ceil(f.retryAfter.Seconds())))
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != wantSecs {
		t.Fatalf("HTTP answer %d, Retry-After %q; want 429 and %s", rec.Code, rec.Header().Get("Retry-After"), wantSecs)
	}
	var body api.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Code != api.CodeProposalRateLimited ||
		!strings.Contains(body.Message, "retry in "+wantSecs+"s") {
		t.Fatalf("HTTP body %s (%v), want code %s", rec.Body.String(), err, api.CodeProposalRateLimited)
	}
	// A refused proposal stores nothing and is not counted.
	r, _, err := w.s.gov.rates.get(ctx, idKey(worldConsumer))
	if err != nil || r.Count != limit {
		t.Fatalf("rate record %+v, %v; want a count of %d", r, err, limit)
	}
	if open, _ := w.openSessions(ctx); open != 0 {
		t.Fatalf("%d open sessions after the refusal, want 0", open)
	}
	recorded := 0
	if _, err := w.s.gov.audit.Scan(ctx, 0, func(r audit.Record) error {
		if r.Kind == "session.propose" && r.Decision == audit.DecisionDeny && strings.HasPrefix(r.Reason, api.CodeProposalRateLimited+":") {
			recorded++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if recorded != 1 {
		t.Fatalf("%d rate refusals recorded, want 1", recorded)
	}

	// The window ends (moved back in time rather than waited for): the identity may propose again.
	_, rev, err := w.s.gov.rates.get(ctx, idKey(worldConsumer))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.s.gov.rates.put(ctx, idKey(worldConsumer), proposalRate{Start: time.Now().Add(-proposalWindow - time.Second), Count: limit}, rev); err != nil {
		t.Fatal(err)
	}
	w.mustPropose(ctx, false)
}

// TestQuotaProposalRateHoldsAcrossControllers has two controllers on one store admit proposals of one identity
// at once, 80 racing for a limit of 20: the compare-and-set lets exactly 20 through, whichever controller
// counted them.
func TestQuotaProposalRateHoldsAcrossControllers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const limit, racers = 20, 80
	cfg := Config{ProposalsPerMinute: limit}
	w := openGovWorld(t, t.TempDir(), cfg)
	other := w.secondController(ctx, cfg)
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := map[*Server]int{}
	refused := 0
	var errs []error
	start := make(chan struct{})
	for i := range racers {
		s := w.s
		if i%2 == 1 {
			s = other
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := s.admitProposal(ctx, worldConsumer, w.ad.ID.String())
			var f *fault
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				admitted[s]++
			case errors.As(err, &f) && f.code == api.CodeProposalRateLimited:
				refused++
			default:
				errs = append(errs, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	total := admitted[w.s] + admitted[other]
	t.Logf("admitted %d by one controller and %d by the other, %d refused", admitted[w.s], admitted[other], refused)
	if len(errs) > 0 || total != limit || refused != racers-limit {
		t.Fatalf("%d admitted, %d refused, other errors %v; want %d, %d, none", total, refused, errs, limit, racers-limit)
	}
	r, _, err := other.gov.rates.get(ctx, idKey(worldConsumer))
	if err != nil || r.Count != limit {
		t.Fatalf("stored count %+v, %v; want %d", r, err, limit)
	}
}

// secondController opens another controller's governance on the world's store, as a second replica would.
func (w *govWorld) secondController(ctx context.Context, cfg Config) *Server {
	w.t.Helper()
	cfg.DataDir = w.dir
	cfg, err := cfg.withDefaults()
	if err != nil {
		w.t.Fatal(err)
	}
	nc, err := w.ns.Connect("gov-test-2")
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		w.t.Fatal(err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, td: worldTD, controllerID: w.s.controllerID}
	if s.ids, err = openIdentityStore(ctx, js); err != nil {
		w.t.Fatal(err)
	}
	if s.gov, err = openGovernance(ctx, js, cfg.Logger, s.controllerID.String(), cfg); err != nil {
		w.t.Fatal(err)
	}
	return s
}

func TestQuotaProposalRateConfig(t *testing.T) {
	for _, tc := range []struct {
		in, want int
	}{{0, defaultProposalsPerMinute}, {7, 7}, {-1, -1}} {
		got, err := Config{DataDir: "x", ProposalsPerMinute: tc.in}.withDefaults()
		if err != nil || got.ProposalsPerMinute != tc.want {
			t.Fatalf("ProposalsPerMinute %d: got %d, %v; want %d", tc.in, got.ProposalsPerMinute, err, tc.want)
		}
	}
	got, err := Config{DataDir: "x"}.withDefaults()
	if err != nil || got.ClosedSessionRetention != defaultClosedSessionRetention {
		t.Fatalf("default retention %v, %v", got.ClosedSessionRetention, err)
	}
	if _, err := (Config{DataDir: "x", ClosedSessionRetention: -time.Second}).withDefaults(); err == nil || !strings.Contains(err.Error(), "ClosedSessionRetention -1s is negative") {
		t.Fatalf("negative retention: %v", err)
	}
}
