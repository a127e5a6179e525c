package zitictrl

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openziti/ziti/controller/change"
	"github.com/openziti/ziti/controller/event"

	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/internal/zitilog"
)

// OpenZiti's registries allow one controller per process, so the cluster test runs each member as this test
// binary re-executed with clusterNodeEnv set: TestMain then runs runClusterNode instead of the tests.
const clusterNodeEnv = "UMBRA_ZITICTRL_CLUSTER_NODE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(clusterNodeEnv); spec != "" {
		os.Exit(runClusterNode(spec))
	}
	os.Exit(m.Run())
}

// nodeSpec is what a member process is started with.
type nodeSpec struct {
	Dir                                     string
	CtrlPort, APIPort, MgmtPort, StatusPort int
	Join                                    string
}

// runClusterNode starts one clustered controller, prints "ready" and serves its ClusterMembers as JSON on
// 127.0.0.1:StatusPort until its stdin closes (or it is killed).
func runClusterNode(spec string) int {
	var s nodeSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "bad node spec:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	zitilog.Route(log, slog.LevelWarn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := Start(ctx, Config{Dir: s.Dir, CtrlPort: s.CtrlPort, APIPort: s.APIPort, MgmtPort: s.MgmtPort,
		Cluster: &Cluster{Join: s.Join}}, log)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/members", func(w http.ResponseWriter, _ *http.Request) {
		members, err := c.ClusterMembers()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(members)
	})
	mux.HandleFunc("/apis", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(c.ClientAPIURLs())
	})
	// /forget deletes this member's own record from the overlay's controllers store: what OpenZiti's
	// DeleteRemovedPeers race leaves behind (see keepListed).
	mux.HandleFunc("POST /forget", func(w http.ResponseWriter, _ *http.Request) {
		ctx := change.New().SetSourceType("test.forget").SetChangeAuthorType(change.AuthorTypeController)
		if err := c.edge.AppEnv.Managers.Controller.Delete(c.MemberID(), ctx); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /guard", func(w http.ResponseWriter, _ *http.Request) {
		if err := checkGuard(c); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.StatusPort)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "status listener:", err)
		return 1
	}
	go func() { _ = http.Serve(l, mux) }()
	fmt.Printf("ready %s\n", c.MemberID())
	_, _ = io.Copy(io.Discard, os.Stdin)
	c.Stop()
	return 0
}

// checkGuard checks, on member c, the watch of disabled identities (guardDisabled): an identity suspended has its
// tokens revoked, a token issued to it afterwards (OpenZiti dispatches the event as it refreshes one) has them
// revoked again, and a token issued to an enabled identity changes nothing.
func checkGuard(c *Controller) error {
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	suspended, err := c.mgmt.CreateIdentity("guard-suspended-"+suffix, "default", nil)
	if err != nil {
		return err
	}
	enabled, err := c.mgmt.CreateIdentity("guard-enabled-"+suffix, "default", nil)
	if err != nil {
		return err
	}
	if err := c.SuspendIdentity(suspended); err != nil {
		return fmt.Errorf("suspend: %w", err)
	}
	revokedAt := func(id string) time.Time {
		r, err := c.edge.AppEnv.Managers.Revocation.Read(id)
		if err != nil || r == nil {
			return time.Time{}
		}
		return r.CreatedAt
	}
	// waitFor polls this member's copy of the store (the revocation is written through raft) for up to 10 s.
	waitFor := func(cond func() bool) bool {
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if cond() {
				return true
			}
		}
		return false
	}
	var first time.Time
	if !waitFor(func() bool { first = revokedAt(suspended); return !first.IsZero() }) {
		return errors.New("the suspended identity's tokens were not revoked")
	}
	if admits, err := c.Admits(suspended, false); err != nil || admits {
		return fmt.Errorf("the overlay admits the suspended identity: %v %v", admits, err)
	}
	time.Sleep(10 * time.Millisecond) // a later revocation must be told from the first by its time
	d := c.fabric.GetEventDispatcher()
	for _, id := range []string{enabled, suspended} { // in this order: once the second is handled, so is the first
		d.AcceptApiSessionEvent(&event.ApiSessionEvent{Namespace: event.ApiSessionEventNS, EventType: event.ApiSessionEventTypeRefreshed,
			Type: event.ApiSessionTypeJwt, Timestamp: time.Now(), IdentityId: id})
	}
	if !waitFor(func() bool { return revokedAt(suspended).After(first) }) {
		return errors.New("a token issued to the suspended identity did not have its tokens revoked again")
	}
	if !revokedAt(enabled).IsZero() {
		return errors.New("a token issued to an enabled identity had its tokens revoked")
	}
	if admits, err := c.Admits(enabled, false); err != nil || !admits {
		return fmt.Errorf("the overlay does not admit an enabled identity: %v %v", admits, err)
	}
	return nil
}

type clusterNode struct {
	spec  nodeSpec
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan string // the member id, once the node printed "ready"
	log   string
}

func startClusterNode(t *testing.T, spec nodeSpec) *clusterNode {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(spec)
	n := &clusterNode{spec: spec, ready: make(chan string, 1), log: filepath.Join(spec.Dir, "..", filepath.Base(spec.Dir)+".log")}
	logf, err := os.Create(n.log)
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(exe, "-test.run=^$")
	n.cmd.Env = append(os.Environ(), clusterNodeEnv+"="+string(b))
	n.cmd.Stderr = logf
	out, err := n.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if n.stdin, err = n.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(n.log); err == nil {
				var keep []string // OpenZiti's own warnings and errors; raft's chatter is in the file
				for _, line := range strings.Split(string(b), "\n") {
					if !strings.Contains(line, "component=raft") {
						keep = append(keep, line)
					}
				}
				if len(keep) > 40 {
					keep = keep[len(keep)-40:]
				}
				t.Logf("--- %s (tail) ---\n%s", filepath.Base(spec.Dir), strings.Join(keep, "\n"))
			}
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				n.ready <- id
			}
		}
	}()
	return n
}

func (n *clusterNode) waitReady(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case id := <-n.ready:
		return id
	case <-time.After(d):
		t.Fatalf("%s not ready within %s", filepath.Base(n.spec.Dir), d)
		return ""
	}
}

// guard runs checkGuard on the node.
func (n *clusterNode) guard(client *http.Client) error {
	c := *client
	c.Timeout = 30 * time.Second
	resp, err := c.Post(fmt.Sprintf("http://127.0.0.1:%d/guard", n.spec.StatusPort), "text/plain", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

func (n *clusterNode) members(client *http.Client) ([]ClusterMember, error) {
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/members", n.spec.StatusPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var out []ClusterMember
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// apis reads the member's ClientAPIURLs.
func (n *clusterNode) apis(client *http.Client) ([]string, error) {
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/apis", n.spec.StatusPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out []string
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// capabilities reads the capabilities the member's public client API advertises to SDKs.
func (n *clusterNode) capabilities(client *http.Client) ([]string, error) {
	caPEM, err := os.ReadFile(filepath.Join(n.spec.Dir, "pki", "ca.cert"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c := &http.Client{Timeout: client.Timeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/edge/client/v1/version", n.spec.APIPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var v struct {
		Data struct {
			Capabilities []string `json:"capabilities"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, fmt.Errorf("version document: %w", err)
	}
	return v.Data.Capabilities, nil
}

func (n *clusterNode) mgmt(t *testing.T) *Mgmt {
	t.Helper()
	secret, err := os.ReadFile(filepath.Join(n.spec.Dir, "admin.secret"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(n.spec.Dir, "pki", "ca.cert"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return newMgmt(fmt.Sprintf("https://127.0.0.1:%d", n.spec.MgmtPort), adminUser, strings.TrimSpace(string(secret)), pool)
}

// distinctPorts picks n distinct free loopback ports below the kernel's ephemeral range (freeport).
func distinctPorts(t *testing.T, n int) []int {
	t.Helper()
	ports, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// TestClusterSurvivesLeaderKill runs three embedded controllers as separate processes on loopback: the first
// initialises a raft cluster, the other two join it through the first one's control-plane address. An
// identity created through one member is read through another, and every member lists every member's client API
// (what SDKs learn the others from); then the leader is killed with SIGKILL, and the
// two survivors must elect a new leader and still create and read identities within 10 s.
func TestClusterSurvivesLeaderKill(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	base := t.TempDir()
	ports := distinctPorts(t, 12)
	nodes := make([]*clusterNode, 3)
	specs := make([]nodeSpec, 3)
	for i := range specs {
		specs[i] = nodeSpec{Dir: filepath.Join(base, fmt.Sprintf("c%d", i+1)), CtrlPort: ports[4*i], APIPort: ports[4*i+1],
			MgmtPort: ports[4*i+2], StatusPort: ports[4*i+3]}
	}
	start := time.Now()
	limit.Step("start c1, which initialises the cluster")
	nodes[0] = startClusterNode(t, specs[0])
	ids := map[string]int{nodes[0].waitReady(t, 90*time.Second): 0}
	t.Logf("c1 initialised the cluster in %s", time.Since(start).Round(time.Millisecond))
	joinStart := time.Now()
	limit.Step("start c2 and c3, which join through c1")
	for i := 1; i < 3; i++ {
		if err := CopyClusterSecrets(specs[0].Dir, specs[i].Dir); err != nil {
			t.Fatal(err)
		}
		specs[i].Join = fmt.Sprintf("tls:127.0.0.1:%d", specs[0].CtrlPort)
		nodes[i] = startClusterNode(t, specs[i])
	}
	for i := 1; i < 3; i++ {
		ids[nodes[i].waitReady(t, 90*time.Second)] = i
	}
	t.Logf("c2 and c3 joined in %s", time.Since(joinStart).Round(time.Millisecond))
	if len(ids) != 3 {
		t.Fatalf("member ids %v: want three distinct ids", ids)
	}

	client := &http.Client{Timeout: 3 * time.Second}
	defer client.CloseIdleConnections()
	// leaderSeenBy polls the given nodes until each lists three voters and all agree on one connected leader,
	// which is connected to want voters (itself included) if it is among them.
	leaderSeenBy := func(deadline time.Time, want int, among ...int) (int, error) {
		var last error
		for time.Now().Before(deadline) {
			leader, agreed := -1, true
			for _, i := range among {
				members, err := nodes[i].members(client)
				if err != nil {
					last, agreed = fmt.Errorf("c%d: %w", i+1, err), false
					break
				}
				// A follower holds a mesh connection to the leader (not necessarily to the other followers); the
				// leader holds one to every follower it replicates to.
				seen, connected, leaderConnected := -1, 0, false
				for _, m := range members {
					if m.Leader {
						seen, leaderConnected = ids[m.ID], m.Connected
					}
					if m.Connected && m.Voter {
						connected++
					}
				}
				if len(members) != 3 || seen < 0 || !leaderConnected || (seen == i && connected < want) ||
					(leader >= 0 && seen != leader) {
					last, agreed = fmt.Errorf("c%d sees %+v", i+1, members), false
					break
				}
				leader = seen
			}
			if agreed {
				return leader, nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return -1, last
	}
	limit.Step("wait until all three agree on a leader")
	leader, err := leaderSeenBy(time.Now().Add(20*time.Second), 3, 0, 1, 2)
	if err != nil {
		t.Fatalf("no agreed leader among three connected voters: %v", err)
	}
	t.Logf("leader: c%d", leader+1)
	limit.Step("a follower suspends an identity and revokes the tokens issued to it afterwards")
	if err := nodes[(leader+1)%3].guard(client); err != nil {
		t.Fatalf("c%d: %v", (leader+1)%3+1, err)
	}

	limit.Step("read each member's version document")
	for i, n := range nodes {
		caps, err := n.capabilities(client)
		if err != nil {
			t.Fatalf("c%d: %v", i+1, err)
		}
		// HA_CONTROLLER: the member runs raft; OIDC_AUTH: SDKs get JWT sessions good at every member.
		for _, want := range []string{"HA_CONTROLLER", "OIDC_AUTH"} {
			if !slices.Contains(caps, want) {
				t.Errorf("c%d advertises %v, want %s among them", i+1, caps, want)
			}
		}
	}

	limit.Step("every member lists every member's client API")
	// What sdk-golang reads after authenticating (GET /controllers) to learn the other members, and what
	// enrollment hands out. Each member's own is first.
	var want []string
	for _, s := range specs {
		want = append(want, fmt.Sprintf("https://127.0.0.1:%d/edge/client/v1", s.APIPort))
	}
	allListed := func(within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for i, n := range nodes {
			for {
				got, err := n.apis(client)
				if err == nil && len(got) == 3 && got[0] == want[i] && sameSet(got, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("c%d lists client APIs %v (err %v), want its own %s first among %v", i+1, got, err, want[i], want)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	allListed(10 * time.Second)

	forgotten := (leader + 1) % 3
	limit.Step("c%d's record is deleted from the overlay's controllers store; it lists itself again", forgotten+1)
	resp, err := client.Post(fmt.Sprintf("http://127.0.0.1:%d/forget", specs[forgotten].StatusPort), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delete c%d's record: %s: %s", forgotten+1, resp.Status, body)
	}
	forgot := time.Now()
	allListed(3 * listedCheck)
	t.Logf("c%d listed by every member again %s after its record was deleted", forgotten+1, time.Since(forgot).Round(time.Millisecond))

	mgmts := make([]*Mgmt, 3)
	for i, n := range nodes {
		mgmts[i] = n.mgmt(t)
	}
	// createAndRead creates an identity through member from and waits until member to serves it.
	createAndRead := func(name string, from, to int, deadline time.Time) error {
		if _, err := mgmts[from].CreateIdentity(name, "default", nil); err != nil {
			return fmt.Errorf("create %s through c%d: %w", name, from+1, err)
		}
		for {
			got, found, err := mgmts[to].FindIdentity(name)
			if err == nil && found && got.ExternalID == name {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s created through c%d, not served by c%d: found=%v err=%v", name, from+1, to+1, found, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	follower := (leader + 1) % 3
	other := (leader + 2) % 3
	limit.Step("create through c%d, read through c%d", follower+1, other+1)
	if err := createAndRead("spiffe://example.org/agent/before", follower, other, time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}

	limit.Step("SIGKILL the leader c%d", leader+1)
	killed := time.Now()
	if err := nodes[leader].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = nodes[leader].cmd.Wait()
	limit.Step("wait for a new leader among c%d and c%d", follower+1, other+1)
	newLeader, err := leaderSeenBy(killed.Add(10*time.Second), 2, follower, other)
	if err != nil {
		t.Fatalf("no new leader within 10 s of killing c%d: %v", leader+1, err)
	}
	if newLeader == leader {
		t.Fatalf("survivors still name the killed c%d as leader", leader+1)
	}
	elected := time.Since(killed)
	survivor := follower
	if survivor == newLeader {
		survivor = other
	}
	limit.Step("create through follower c%d, read through new leader c%d", survivor+1, newLeader+1)
	if err := createAndRead("spiffe://example.org/agent/after", survivor, newLeader, killed.Add(10*time.Second)); err != nil {
		t.Fatalf("after the leader died: %v", err)
	}
	served := time.Since(killed)
	if served > 10*time.Second {
		t.Fatalf("the survivors served again %s after the leader died, want within 10 s", served)
	}
	if _, found, err := mgmts[survivor].FindIdentity("spiffe://example.org/agent/before"); err != nil || !found {
		t.Errorf("identity created before the kill, read through c%d: found=%v err=%v", survivor+1, found, err)
	}
	t.Logf("leader c%d killed: c%d elected after %s, a write through c%d read back through c%d after %s",
		leader+1, newLeader+1, elected.Round(time.Millisecond), survivor+1, newLeader+1, served.Round(time.Millisecond))
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
