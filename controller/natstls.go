package controller

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/workgroups"
)

// serverCertificate issues a TLS server certificate from the SPIFFE CA, valid for localhost, the loopback
// addresses and hosts, and carrying uris (a SPIFFE ID, where clients verify one).
func serverCertificate(ca *pki.CA, uris []*url.URL, hosts ...string) (tls.Certificate, error) {
	key, err := pki.NewKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	dns, ips := []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
		} else if h != "" {
			dns = append(dns, h)
		}
	}
	leaf, err := ca.IssueServer(key.Public(), dns, ips, uris, 30*24*time.Hour, time.Now())
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// natsTLS is the TLS configuration of the embedded NATS server's TCP listener. JetStream holds the identity
// records, governance state and the audit trail, so the listener is mutual TLS: the server presents a
// certificate from the SPIFFE CA with the controller's SPIFFE ID, and a client must present an SVID of this
// trust domain whose kind is controller (another controller of this deployment). Workload SVIDs, certificates
// of any other CA and clients without a certificate are refused in the handshake.
func natsTLS(ca *pki.CA, self spiffeid.ID, hosts ...string) (*tls.Config, error) {
	cert, err := serverCertificate(ca, []*url.URL{self.URL()}, hosts...)
	if err != nil {
		return nil, fmt.Errorf("controller: NATS certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	td := self.TrustDomain()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no client certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			id, err := x509svid.IDFromCert(leaf)
			if err != nil {
				return fmt.Errorf("client certificate is not an SVID: %w", err)
			}
			if !isControllerID(td, id) {
				return fmt.Errorf("%s may not use the controller's NATS", id)
			}
			return nil
		},
	}, nil
}

// isControllerID tells whether id names a controller of trust domain td (spiffe://td/<org>/controller/<name>).
func isControllerID(td spiffeid.TrustDomain, id spiffeid.ID) bool {
	ident, err := workgroups.ParseIdentity(id)
	return err == nil && id.MemberOf(td) && ident.Kind == api.ControllerAPIKind
}
