package controller

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClusterSecrets exports a new controller's secrets, installs them into an empty data directory and checks
// what is refused: a directory holding other keys or anything else, and a bundle that is not one.
func TestClusterSecrets(t *testing.T) {
	base := t.TempDir()
	first := filepath.Join(base, "c1")
	bundle, err := ExportClusterSecrets(first, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	// The export created the first controller's keys, private ones owner-only.
	for _, name := range clusterSecretFiles() {
		fi, err := os.Stat(filepath.Join(first, name))
		if err != nil {
			t.Fatalf("export did not create %s: %v", name, err)
		}
		if !strings.HasSuffix(name, ".cert") && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want owner-only", name, fi.Mode().Perm())
		}
	}
	again, err := ExportClusterSecrets(first, "")
	if err != nil || !bytes.Equal(again, bundle) {
		t.Fatalf("a second export differs (err %v): the first controller's keys must not change", err)
	}
	if _, err := ExportClusterSecrets(first, "other.org"); err == nil || !strings.Contains(err.Error(), "example.org") {
		t.Fatalf("export with another trust domain: %v, want a refusal naming example.org", err)
	}
	if td, err := ClusterSecretsTrustDomain(bundle); err != nil || td != "example.org" {
		t.Fatalf("bundle trust domain %q, %v", td, err)
	}

	joiner := filepath.Join(base, "c2")
	if err := InstallClusterSecrets(joiner, bundle); err != nil {
		t.Fatal(err)
	}
	for _, name := range clusterSecretFiles() {
		want, _ := os.ReadFile(filepath.Join(first, name))
		got, err := os.ReadFile(filepath.Join(joiner, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s not installed as exported (err %v)", name, err)
		}
		if fi, _ := os.Stat(filepath.Join(joiner, name)); !strings.HasSuffix(name, ".cert") && fi.Mode().Perm() != 0o600 {
			t.Errorf("installed %s has mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(joiner); fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want 0700", fi.Mode().Perm())
	}
	// A member started again with the same bundle, its data directory in use by then, is left as it is.
	if err := os.WriteFile(filepath.Join(joiner, "nats-server-name"), []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := InstallClusterSecrets(joiner, bundle); err != nil {
		t.Fatalf("installing the same bundle again: %v", err)
	}

	other := filepath.Join(base, "other")
	otherBundle, err := ExportClusterSecrets(other, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, dir string
		bundle    []byte
		want      string
	}{
		{"another deployment's keys", other, bundle, "differs from the cluster's"},
		{"a member of another cluster", joiner, otherBundle, "differs from the cluster's"},
		{"a used directory", func() string {
			d := filepath.Join(base, "used")
			_ = os.MkdirAll(filepath.Join(d, "jetstream"), 0o700)
			return d
		}(), bundle, "not empty"},
		{"not a bundle", filepath.Join(base, "x"), []byte(`{"spiffe_id":"x"}`), "not a cluster secrets bundle"},
		{"a path outside the data directory", filepath.Join(base, "y"), func() []byte {
			var b secretsBundle
			_ = json.Unmarshal(bundle, &b)
			b.Files["../escape"] = []byte("x")
			out, _ := json.Marshal(b)
			return out
		}(), "want"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := InstallClusterSecrets(c.dir, c.bundle)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(base, "escape")); err == nil {
		t.Fatal("a bundle wrote outside the data directory")
	}
}

// TestOverlayClusterConfig checks the overlay cluster settings' validation.
func TestOverlayClusterConfig(t *testing.T) {
	nats := Config{NATSClusterListen: "127.0.0.1:7422", NATSRoutes: []string{"127.0.0.1:7423"}}
	for _, c := range []struct {
		name string
		cfg  Config
		want string // "" for accepted
	}{
		{"init alone", Config{ClusterInit: true}, ""},
		{"join", func() Config { c := nats; c.ClusterJoin = "tls:127.0.0.1:6262"; return c }(), ""},
		{"init and join", func() Config { c := nats; c.ClusterInit, c.ClusterJoin = true, "tls:127.0.0.1:6262"; return c }(), "exclude"},
		{"join without tls:", func() Config { c := nats; c.ClusterJoin = "127.0.0.1:6262"; return c }(), "tls:HOST:PORT"},
		{"join without a port", func() Config { c := nats; c.ClusterJoin = "tls:127.0.0.1"; return c }(), "tls:HOST:PORT"},
		{"join without NATS", Config{ClusterJoin: "tls:127.0.0.1:6262"}, "NATSClusterListen"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.DataDir = t.TempDir()
			got, err := cfg.withDefaults()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got.overlayCluster() == nil || got.overlayCluster().Join != c.cfg.ClusterJoin {
					t.Fatalf("overlay cluster %+v", got.overlayCluster())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	if (Config{}).overlayCluster() != nil {
		t.Fatal("a controller without cluster settings must run a lone overlay controller")
	}
}
