//go:build unix

package gatewayhost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile is the file in a gateway's data directory that its running gateway holds locked.
const lockFile = "gateway.lock"

// dirLock is a held data directory lock. The kernel releases it when the process ends, however it ends: a
// crashed gateway never leaves a stale lock behind.
type dirLock struct{ f *os.File }

// lockDir takes the data directory dir for the gateway holder (its SPIFFE ID), or says which process holds it.
// Two gateways sharing one directory would share one JetStream store, which is not made for that.
func lockDir(dir, holder string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	// flock locks belong to the open file: a second open in the same process conflicts too.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is in use by another gateway (%s): give each gateway its own data directory",
				dir, describeHolder(b))
		}
		return nil, fmt.Errorf("data directory %s: lock: %w", dir, err)
	}
	// What the file says serves only the message to a gateway refused the directory: not worth failing for.
	_ = f.Truncate(0)
	_, _ = f.WriteAt(fmt.Appendf(nil, "pid %d\n%s\n", os.Getpid(), holder), 0)
	return &dirLock{f: f}, nil
}

// describeHolder reads what a lock file says of its holder: "pid 123, spiffe://...".
func describeHolder(b []byte) string {
	lines := strings.Fields(string(b))
	if len(lines) >= 2 && lines[0] == "pid" {
		if _, err := strconv.Atoi(lines[1]); err == nil {
			if len(lines) >= 3 {
				return "pid " + lines[1] + ", " + lines[2]
			}
			return "pid " + lines[1]
		}
	}
	return "holder unknown"
}

// release gives the directory up.
func (l *dirLock) release() {
	if l != nil && l.f != nil {
		_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
	}
}
