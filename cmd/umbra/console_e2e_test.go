package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath finds Debian's chromium; without it the browser test skips, unless UMBRA_REQUIRE_BROWSER=1 (CI).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("UMBRA_REQUIRE_BROWSER") == "1" {
		t.Fatal("no chromium on PATH and UMBRA_REQUIRE_BROWSER=1: install it (apt-get install -y chromium)")
	}
	t.Skip("no chromium on PATH: install Debian's chromium to run the console in a real browser (UMBRA_REQUIRE_BROWSER=1 makes this a failure)")
	return ""
}

// TestConsoleInBrowser drives the web console in headless Chromium against a real network (`umbra dev`): the
// platform administrator's bridge loads every page, verifies the chain, downloads an export and watches live
// envelopes (and a refusal, with its reason) appear; an organisation's administrator sees only its own
// organisation; an agent identity cannot reach the console; the bridge refuses a foreign Host.
// UMBRA_CONSOLE_SCREENSHOTS=DIR writes the pages' screenshots there (docs/console holds the committed ones).
func TestConsoleInBrowser(t *testing.T) {
	chromiumPath(t)
	c := newCLI(t, 8*time.Minute)
	args, _ := devArgs(t, "data")
	c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	enrollOrg := func(org string) string {
		write(org+"-admin.token", c.must("", "org", "create", "--as", admin, "--name", org))
		c.must("", "enroll", "--token", org+"-admin.token", "--out", org+"-admin.json")
		return org + "-admin.json"
	}
	enrollAgent := func(orgAdmin, org, name string) string {
		write(name+".token", c.must("", "identity", "create", "--as", orgAdmin, "--org", org, "--name", name))
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
		return name + ".json"
	}
	acme, globex, initech := enrollOrg("acme"), enrollOrg("globex"), enrollOrg("initech")
	quoter, buyer := enrollAgent(acme, "acme", "quoter"), enrollAgent(globex, "globex", "buyer")
	enrollAgent(initech, "initech", "auditor")
	c.must("", "workgroup", "create", "--as", acme, "--name", "pricing", "--invite", "globex")
	c.must("", "workgroup", "accept", "--as", globex, "pricing")
	c.must("", "workgroup", "member", "add", "--as", acme, "pricing", "spiffe://umbra.local/acme/agent/quoter")
	c.must("", "workgroup", "member", "add", "--as", globex, "acme/pricing", "spiffe://umbra.local/globex/agent/buyer")
	c.must("", "workgroup", "create", "--as", initech, "--name", "internal")
	write("card.json", `{"name":"Quoter","description":"prices widgets","version":"1.0","skills":[{"id":"quote","name":"Quote"}],"message_types":["quote.*"]}`)
	write("terms.json", `{"max_duration":"48h","max_messages":20,"allowed_message_types":["quote.request","quote.response"],"max_envelope_bytes":4096}`)
	ad := strings.TrimSpace(c.must("", "advertise", "--as", quoter, "--card", "card.json", "--terms", "terms.json", "--workgroup", "pricing"))
	sid := strings.TrimSpace(c.must("", "session", "propose", "--as", buyer, "--ad", ad, "--max-messages", "10",
		"--types", "quote.request,quote.response", "--duration", "30m"))
	c.must(`{"sku":"w-1"}`, "session", "send", "--as", buyer, "--session", sid, "--type", "quote.request")
	c.must(`{"price":42}`, "session", "send", "--as", quoter, "--session", sid, "--type", "quote.response")
	if _, errs, err := c.run(`{}`, "session", "send", "--as", buyer, "--session", sid, "--type", "order.place"); err == nil || !strings.Contains(errs, "type_not_allowed") {
		t.Fatalf("disallowed type: err=%v %s", err, errs)
	}

	port := freePort(t)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	c.start("umbra console on", "ui", "--as", admin, "--listen", "127.0.0.1:"+strconv.Itoa(port))

	b := newConsoleBrowser(t, c)
	step, text, shot, wantAll := b.step, b.text, b.shot, b.wantAll
	bctx := b.ctx

	// Overview: organisations, workgroups with invitations, identities.
	step("overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#ids-h")))
	wantAll("overview", text("main"), "acme", "globex", "initech", "acme/pricing", "initech/internal", "spiffe://umbra.local/acme/agent/quoter",
		"spiffe://umbra.local/globex/agent/buyer", "enrolled", "accepted")
	shot("overview")

	// Sessions, and the session reconstructed from the audit: contract, envelopes, the refusal with its reason.
	step("sessions", chromedp.Navigate(base+"/sessions"), chromedp.WaitVisible(chromedp.CSS("main table")))
	wantAll("sessions", text("main table"), sid, "active", "spiffe://umbra.local/globex/agent/buyer")
	shot("sessions")
	step("open the session", chromedp.Click(chromedp.CSS(`a[href="/sessions/`+sid+`"]`)), chromedp.WaitVisible(chromedp.CSS("#timeline-h")))
	wantAll("session", text("main"), "max_messages", "quote.request", "quote.response", "type_not_allowed", "envelope.rejected", "session.transition")
	if n := text("#refusals-h .count"); n != "1" {
		t.Fatalf("refusals count %q, want 1", n)
	}
	shot("session")

	// Audit search by kind, then verify the chain (a POST with the CSRF token) and download an export.
	step("audit search", chromedp.Navigate(base+"/audit"), chromedp.WaitVisible(chromedp.CSS("#kind")),
		chromedp.SendKeys(chromedp.CSS("#kind"), "envelope.*"), chromedp.SendKeys(chromedp.CSS("#session"), sid),
		chromedp.Click(chromedp.CSS(`form.search button[type="submit"]`)), chromedp.WaitVisible(chromedp.CSS(`#audit-results[data-filtered="yes"]`)))
	got := text("main table tbody")
	wantAll("audit search", got, "envelope.accepted", "envelope.rejected", "type_not_allowed")
	if strings.Contains(got, "session.transition") {
		t.Fatalf("a search by kind envelope.* listed a session.transition:\n%s", got)
	}
	shot("audit")
	step("verify", chromedp.Click(chromedp.CSS(`form[action="/audit/verify"] button`)),
		chromedp.WaitVisible(chromedp.CSS("p.ok")))
	wantAll("verify", text("main"), "Audit chain verified")
	exportCtx, cancelExport := context.WithTimeout(bctx, 45*time.Second)
	export, err := chromedp.Run(exportCtx, chromedp.Evaluate[string](`fetch("/audit/export").then(r => r.text())`, chromedp.EvalAwaitPromise))
	cancelExport()
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	if lines := strings.Count(export, "\n"); lines < 10 || !strings.Contains(export, sid) || !strings.Contains(export, "audit.checkpoint") {
		t.Fatalf("export: %d lines, session %v, checkpoint %v", lines, strings.Contains(export, sid), strings.Contains(export, "audit.checkpoint"))
	}

	// Live: an envelope sent now appears without a reload, and a refusal appears highlighted with its reason.
	step("live", chromedp.Navigate(base+"/live"),
		chromedp.Poll[chromedp.Void](`document.getElementById("live-status").textContent === "Live: connected."`, chromedp.WithPollingTimeout(30*time.Second)))
	c.must(`{"sku":"w-2"}`, "session", "send", "--as", buyer, "--session", sid, "--type", "quote.request")
	if _, errs, err := c.run(`{}`, "session", "send", "--as", buyer, "--session", sid, "--type", "shell.exec"); err == nil || !strings.Contains(errs, "type_not_allowed") {
		t.Fatalf("disallowed type: err=%v %s", err, errs)
	}
	step("live envelope and refusal appear",
		chromedp.Poll[chromedp.Void](`[...document.querySelectorAll("#live-rows tr.fresh")].some(r => r.textContent.includes("quote.request") && r.textContent.includes("envelope.accepted"))`,
			chromedp.WithPollingTimeout(30*time.Second)),
		chromedp.Poll[chromedp.Void](`[...document.querySelectorAll("#live-rows tr.fresh.refused")].some(r => r.textContent.includes("shell.exec") && r.querySelector(".reason").textContent.includes("type_not_allowed"))`,
			chromedp.WithPollingTimeout(30*time.Second)))
	shot("live")

	// Posture: the advertisement offers sessions longer than policy allows, a finding with evidence and fix.
	// The kill switch: initech's auditor suspended from the page, with a reason, then resumed.
	step("posture", chromedp.Navigate(base+"/posture"), chromedp.WaitVisible(chromedp.CSS("#findings")))
	wantAll("posture findings", text("#findings"), "medium", ad, "48h")
	wantAll("posture inventory", text("#inventory"), "spiffe://umbra.local/initech/agent/auditor", "enrolled")
	auditor := `tr[data-id="spiffe://umbra.local/initech/agent/auditor"]`
	step("suspend the auditor", chromedp.SendKeys(chromedp.CSS(auditor+` input[name="reason"]`), "key found in a public repository"),
		chromedp.Click(chromedp.CSS(auditor+` form.kill button`)), chromedp.WaitVisible(chromedp.CSS("#notice")))
	wantAll("suspension notice", text("#notice"), "Suspended spiffe://umbra.local/initech/agent/auditor")
	wantAll("suspended auditor", text(auditor), "suspended", "key found in a public repository", "Resume")
	wantAll("posture findings after the suspension", text("#findings"), "identity is suspended")
	shot("posture")
	step("resume the auditor", chromedp.SendKeys(chromedp.CSS(auditor+` input[name="reason"]`), "key rotated"),
		chromedp.Click(chromedp.CSS(auditor+` form.kill button`)), chromedp.WaitVisible(chromedp.CSS(auditor+` form[action="/posture/suspend"]`)))
	wantAll("resumed auditor", text(auditor), "enrolled", "Suspend")
	trail := c.must("", "audit", "export", "--as", admin)
	for _, kind := range []string{`"kind":"identity.suspended"`, `"kind":"identity.resumed"`} {
		if !regexp.MustCompile(kind + `[^\n]*"actor":"spiffe://umbra.local/umbra/admin/root"`).MatchString(trail) {
			t.Fatalf("no %s record under the platform administrator", kind)
		}
	}

	// Without an MCP gateway to reach, the approvals page says so in one line.
	step("approvals without a gateway", chromedp.Navigate(base+"/approvals"), chromedp.WaitVisible(chromedp.CSS("#refusal")))
	wantAll("approvals without a gateway", text("#refusal"), "MCP gateway mcpgw")

	// An organisation's administrator sees only its organisation.
	orgPort := freePort(t)
	c.start("umbra console on", "ui", "--as", initech, "--listen", "127.0.0.1:"+strconv.Itoa(orgPort))
	orgBase := "http://127.0.0.1:" + strconv.Itoa(orgPort)
	step("org admin overview", chromedp.Navigate(orgBase+"/"), chromedp.WaitVisible(chromedp.CSS("#ids-h")))
	ov := text("main")
	wantAll("org admin overview", ov, "initech/internal", "spiffe://umbra.local/initech/agent/auditor")
	for _, other := range []string{"acme", "globex", "quoter"} {
		if strings.Contains(ov, other) {
			t.Fatalf("initech's administrator sees %q:\n%s", other, ov)
		}
	}
	step("org admin sessions", chromedp.Navigate(orgBase+"/sessions"), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if s := text("main"); strings.Contains(s, sid) {
		t.Fatalf("initech's administrator sees acme's session:\n%s", s)
	}
	step("org admin session page", chromedp.Navigate(orgBase+"/sessions/"+sid), chromedp.WaitVisible(chromedp.CSS("p.alert")))
	wantAll("org admin session page", text("p.alert"), "not found")

	// Plain HTTP checks of the bridge: an agent identity cannot reach the console; a foreign Host is refused.
	agentPort := freePort(t)
	c.start("umbra console on", "ui", "--as", quoter, "--listen", "127.0.0.1:"+strconv.Itoa(agentPort))
	get := func(url, host string) (int, string) {
		t.Helper()
		c.limit.Step("GET %s (Host %s)", url, host)
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://127.0.0.1:"+strconv.Itoa(agentPort)+"/", ""); code == http.StatusOK || strings.Contains(body, "acme/pricing") {
		t.Fatalf("an agent identity reached the console: %d %s", code, body)
	}
	if code, _ := get(base+"/", "rebound.attacker.example:"+strconv.Itoa(port)); code != http.StatusMisdirectedRequest {
		t.Fatalf("foreign Host: status %d, want %d", code, http.StatusMisdirectedRequest)
	}
	// Non-loopback listen addresses are refused before anything starts.
	if _, errs, err := c.run("", "ui", "--as", admin, "--listen", "0.0.0.0:0"); err == nil || !strings.Contains(errs, "only loopback") {
		t.Fatalf("ui --listen 0.0.0.0:0: err=%v %s", err, errs)
	}
}

// consoleBrowser is headless Chromium driven by chromedp, with each step under its own deadline; the console
// tests share it.
type consoleBrowser struct {
	t     *testing.T
	c     *cli
	ctx   context.Context
	shots string // UMBRA_CONSOLE_SCREENSHOTS, absolute
}

// newConsoleBrowser starts Chromium (skipping the test without one); it is stopped when the test ends.
func newConsoleBrowser(t *testing.T, c *cli) *consoleBrowser {
	t.Helper()
	chromium := chromiumPath(t)
	b := &consoleBrowser{t: t, c: c, shots: os.Getenv("UMBRA_CONSOLE_SCREENSHOTS")}
	if b.shots != "" {
		if abs, err := filepath.Abs(b.shots); err == nil {
			b.shots = abs
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.WindowSize(1360, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancelBrowser)
	b.ctx = bctx
	c.limit.Step("start chromium")
	// The first Do starts the browser, which lives as long as the context of that call: it gets bctx, with no
	// deadline of its own, and is bounded by cancelling bctx if it takes too long. Every later step runs under
	// its own deadline.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(bctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting chromium: %v", err)
		}
	case <-time.After(60 * time.Second):
		cancelBrowser()
		t.Fatal("chromium did not start within 60s")
	}
	return b
}

// step runs actions under a 45 s deadline.
func (b *consoleBrowser) step(name string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	b.c.limit.Step("browser: %s", name)
	ctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v", name, err)
	}
}

// text is the text of the first element sel selects.
func (b *consoleBrowser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}

// exists reports whether sel selects something on the page now.
func (b *consoleBrowser) exists(sel string) bool {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector(`+strconv.Quote(sel)+`) !== null`))
	if err != nil {
		b.t.Fatalf("browser: looking for %s: %v", sel, err)
	}
	return ok
}

// shot writes a full-page screenshot to the screenshots directory, if one was given.
func (b *consoleBrowser) shot(name string) {
	b.t.Helper()
	if b.shots == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *consoleBrowser) wantAll(page, got string, want ...string) {
	b.t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			b.t.Fatalf("%s lacks %q:\n%s", page, w, got)
		}
	}
}
