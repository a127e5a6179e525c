//go:build !unix

package gatewayhost

import (
	"fmt"
	"os"
)

// dirLock is a no-op where flock is not available: two gateways must not be given one data directory.
type dirLock struct{}

func lockDir(dir, _ string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	return &dirLock{}, nil
}

func (*dirLock) release() {}
