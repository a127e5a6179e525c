package zitictrl

import (
	"errors"
	"testing"
)

// TestAPIAddressKept: a start at the address of the last start (or a first start) passes; one at another host or
// port is refused, naming both addresses, before anything is written.
func TestAPIAddressKept(t *testing.T) {
	dir := t.TempDir()
	first := Config{Dir: dir, BindHost: "127.0.0.1", AdvertiseHost: "127.0.0.1", CtrlPort: 6262, APIPort: 1280, MgmtPort: 1290}
	if err := checkAPIAddress(first); err != nil {
		t.Fatalf("first start: %v", err)
	}
	if _, err := writeConfig(first); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		moved  bool
	}{
		{"same addresses", func(*Config) {}, false},
		{"other control and management ports", func(c *Config) { c.CtrlPort, c.MgmtPort = 7262, 7290 }, false},
		{"other API port", func(c *Config) { c.APIPort = 2280 }, true},
		{"other advertised host", func(c *Config) { c.AdvertiseHost = "ctrl.example" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := first
			tc.change(&cfg)
			err := checkAPIAddress(cfg)
			var moved *APIMovedError
			if got := errors.As(err, &moved); got != tc.moved {
				t.Fatalf("checkAPIAddress: %v, want moved=%v", err, tc.moved)
			}
			if tc.moved && (moved.Stored != "127.0.0.1:1280" || moved.Given == moved.Stored) {
				t.Fatalf("APIMovedError %+v", moved)
			}
		})
	}
}
