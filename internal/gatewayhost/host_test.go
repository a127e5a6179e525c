package gatewayhost

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestCheckKind(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"spiffe://umbra.local/acme/gateway/mcpgw", true},
		{"spiffe://umbra.local/umbra-platform/gateway/llmgw", true},
		{"spiffe://umbra.local/acme/agent/analyst", false},
		{"spiffe://umbra.local/acme/admin/gateway", false},
		{"spiffe://umbra.local/gateway/x", false},
		{"spiffe://umbra.local/acme/gateway/mcpgw/extra", false},
	} {
		err := CheckKind(spiffeid.RequireFromString(tc.id))
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && (strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `kind "gateway"`)) {
			t.Errorf("%s: error %q is not one line naming the kind", tc.id, err)
		}
	}
}

// A data directory is held by one gateway: a second lock fails at once naming the directory and the holder, also
// from another process, and the directory is free again once the holder lets go or its process ends.
func TestDataDirLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mcpgw-data")
	const holder = "spiffe://umbra.local/acme/gateway/mcpgw"
	l, err := lockDir(dir, holder)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDir(dir, "spiffe://umbra.local/acme/gateway/other")
	if err == nil {
		t.Fatal("a second lock on a held data directory succeeded")
	}
	msg := err.Error()
	for _, want := range []string{dir, "pid " + strconv.Itoa(os.Getpid()), holder} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error %q is not one line", msg)
	}

	// Another process is refused too: the lock is the kernel's, not this process's memory.
	if os.Getenv("GATEWAYHOST_LOCK_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestDataDirLockChild$", "-test.v")
		cmd.Env = append(os.Environ(), "GATEWAYHOST_LOCK_CHILD="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "refused: data directory "+dir+" is in use") {
			t.Fatalf("child process: %v\n%s", err, out)
		}
	}

	l.release()
	l2, err := lockDir(dir, holder)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.release()
}

// TestDataDirLockChild runs in a child process of TestDataDirLock.
func TestDataDirLockChild(t *testing.T) {
	dir := os.Getenv("GATEWAYHOST_LOCK_CHILD")
	if dir == "" {
		t.Skip("run by TestDataDirLock")
	}
	l, err := lockDir(dir, "spiffe://umbra.local/acme/gateway/child")
	if err == nil {
		l.release()
		t.Fatal("the child took a lock its parent holds")
	}
	t.Log("refused: " + err.Error())
}
