package controller

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
)

// secretsFormat names the layout of a cluster secrets bundle.
const secretsFormat = "umbra-cluster-secrets/1"

// clusterSecretFiles are the files, relative to the data directory, that every controller of a cluster must
// hold the same: the SPIFFE CA (SVIDs one issues every other accepts, NATS routes admit each other), the
// enrollment token key (a token made at one controller is redeemed at another), the audit checkpoint key (one
// public key verifies every controller's checkpoints and signed webhooks), and the overlay's CA and admin
// secret (zitictrl.ClusterSecretFiles).
func clusterSecretFiles() []string {
	files := []string{"spiffe/ca.cert", "spiffe/ca.key", "spiffe/token.key", "spiffe/audit.key"}
	for _, f := range zitictrl.ClusterSecretFiles() {
		files = append(files, "overlay/"+f)
	}
	return files
}

// secretsBundle is the JSON form of the cluster's secrets.
type secretsBundle struct {
	Format      string            `json:"format"`
	TrustDomain string            `json:"trust_domain"`
	Files       map[string][]byte `json:"files"`
}

// ExportClusterSecrets returns the secrets the other controllers of dataDir's cluster need, as one bundle for
// InstallClusterSecrets. A data directory that does not exist yet gets them created first, for trustDomain
// (default "umbra.local"), so that every member can be given them before any starts. The bundle holds private
// keys: keep it as the data directory's keys are kept, and delete it once the members are installed.
func ExportClusterSecrets(dataDir, trustDomain string) ([]byte, error) {
	td, err := dataDirTrustDomain(dataDir, trustDomain)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if _, err := loadAuthorityFiles(dataDir, td); err != nil {
		return nil, err
	}
	if err := zitictrl.EnsureClusterSecrets(filepath.Join(dataDir, "overlay")); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	b := secretsBundle{Format: secretsFormat, TrustDomain: td.Name(), Files: map[string][]byte{}}
	for _, name := range clusterSecretFiles() {
		if b.Files[name], err = os.ReadFile(filepath.Join(dataDir, filepath.FromSlash(name))); err != nil {
			return nil, fmt.Errorf("controller: cluster secrets: %w", err)
		}
	}
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	return append(out, '\n'), nil
}

// dataDirTrustDomain is the trust domain of dataDir's SPIFFE CA, or trustDomain (default "umbra.local") for a
// directory without one; a trustDomain that contradicts the CA is refused.
func dataDirTrustDomain(dataDir, trustDomain string) (spiffeid.TrustDomain, error) {
	var want spiffeid.TrustDomain
	if trustDomain != "" {
		var err error
		if want, err = spiffeid.TrustDomainFromString(trustDomain); err != nil {
			return want, fmt.Errorf("controller: trust domain %q: %w", trustDomain, err)
		}
	}
	dir := filepath.Join(dataDir, "spiffe")
	if _, err := os.Stat(filepath.Join(dir, "ca.cert")); err != nil {
		if want.IsZero() {
			want = spiffeid.RequireTrustDomainFromString("umbra.local")
		}
		return want, nil
	}
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.cert"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return want, fmt.Errorf("controller: SPIFFE CA: %w", err)
	}
	if len(ca.Cert.URIs) == 0 {
		return want, fmt.Errorf("controller: %s/ca.cert names no trust domain", dir)
	}
	have, err := spiffeid.TrustDomainFromURI(ca.Cert.URIs[0])
	if err != nil {
		return want, fmt.Errorf("controller: SPIFFE CA: %w", err)
	}
	if !want.IsZero() && want != have {
		return want, fmt.Errorf("controller: %s belongs to trust domain %s, not %s", dataDir, have.Name(), want.Name())
	}
	return have, nil
}

// InstallClusterSecrets puts a bundle from ExportClusterSecrets into dataDir, the data directory of a controller
// that is to join the cluster. It writes only into a directory that does not exist or is empty (private keys
// mode 0600, directories 0700). A directory that already holds exactly the bundle's files is left as it is, so
// that a member may be started again with the same bundle; one that holds other keys, or anything else, is
// refused: it belongs to another controller.
func InstallClusterSecrets(dataDir string, bundle []byte) error {
	var b secretsBundle
	dec := json.NewDecoder(bytes.NewReader(bundle))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil || b.Format != secretsFormat {
		return errors.New("controller: not a cluster secrets bundle (make one with `umbra controller secrets export`)")
	}
	want := clusterSecretFiles()
	have := make([]string, 0, len(b.Files))
	for name := range b.Files {
		have = append(have, name)
	}
	sort.Strings(have)
	sorted := slices.Sorted(slices.Values(want))
	if !slices.Equal(have, sorted) {
		return fmt.Errorf("controller: the cluster secrets bundle holds %s, want %s", strings.Join(have, ", "), strings.Join(sorted, ", "))
	}
	present := 0
	for _, name := range want {
		got, err := os.ReadFile(filepath.Join(dataDir, filepath.FromSlash(name)))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("controller: %w", err)
		}
		if !bytes.Equal(got, b.Files[name]) {
			return fmt.Errorf("controller: %s/%s differs from the cluster's: this data directory belongs to another controller or deployment; join with a new, empty --data directory", dataDir, name)
		}
		present++
	}
	if present == len(want) {
		return nil
	}
	entries, err := os.ReadDir(dataDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("controller: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("controller: %s is not empty: cluster secrets are installed only into a new data directory (give the joining controller a new --data directory)", dataDir)
	}
	for _, name := range want {
		path := filepath.Join(dataDir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("controller: %w", err)
		}
		mode := os.FileMode(0o600)
		if strings.HasSuffix(name, ".cert") {
			mode = 0o644 // a CA certificate is public, as the controller writes it itself
		}
		if err := os.WriteFile(path, b.Files[name], mode); err != nil {
			return fmt.Errorf("controller: %w", err)
		}
	}
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	return nil
}

// ClusterSecretsTrustDomain is the trust domain a cluster secrets bundle was made for.
func ClusterSecretsTrustDomain(bundle []byte) (string, error) {
	var b secretsBundle
	if err := json.Unmarshal(bundle, &b); err != nil || b.Format != secretsFormat {
		return "", errors.New("controller: not a cluster secrets bundle (make one with `umbra controller secrets export`)")
	}
	return b.TrustDomain, nil
}
