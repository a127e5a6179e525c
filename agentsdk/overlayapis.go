package agentsdk

import (
	"errors"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/openziti/identity"
	edgeapis "github.com/openziti/sdk-golang/edge-apis"
	"github.com/openziti/sdk-golang/ziti"

	"github.com/umbra-mesh/umbra/internal/pki"
)

// Failing over between the controllers of a cluster.
//
// Every controller of a cluster serves the overlay's edge client API, and an agent may authenticate and refresh
// its overlay session through any of them. An agent knows them from its identity (enrollment lists every member
// the issuing controller knew of) and learns them from the overlay (after authenticating, sdk-golang lists the
// cluster's controllers). Each overlay context gets all of them: sdk-golang then moves a request whose
// controller does not answer (a network error) to another one by itself, and so refreshes sessions and services
// through a survivor. A new overlay context (Connect, and every reconnect) starts with the API that authenticated
// the last one, then the identity's, then the learned ones.

// overlayAPIs is an agent's address book of overlay edge client APIs. It is safe for concurrent use.
type overlayAPIs struct {
	mu sync.Mutex
	// last is the API that authenticated the newest overlay context.
	last string
	// learned lists the APIs the overlay named, in the order first seen.
	learned []string
}

// order lists the APIs to try for id: the last one that worked, id's, then the learned ones, without repeats.
func (b *overlayAPIs) order(id *Identity) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, u := range append(append([]string{b.last}, id.overlayAPIs...), b.learned...) {
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// learn adds the APIs the overlay named.
func (b *overlayAPIs) learn(urls []*url.URL) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range urls {
		if s := u.String(); u.Scheme == "https" && !slices.Contains(b.learned, s) {
			b.learned = append(b.learned, s)
		}
	}
}

// used records the API that authenticated the newest overlay context.
func (b *overlayAPIs) used(u string) {
	b.mu.Lock()
	b.last = u
	b.mu.Unlock()
}

// newZitiContext authenticates id to the overlay in a new context, through the first API of book's order that
// answers. A refusal of the identity (ErrNotAuthorized) is final: every controller of a cluster shares the same
// identities.
func newZitiContext(id *Identity, refresh time.Duration, book *overlayAPIs) (ziti.Context, error) {
	apis := book.order(id)
	var last error
	for i := range apis {
		// Each attempt prefers another API; sdk-golang itself moves on from one that gives a network error.
		zctx, err := contextAt(id, refresh, append(slices.Clone(apis[i:]), apis[:i]...), book)
		if err == nil {
			return zctx, nil
		}
		if errors.Is(err, ErrNotAuthorized) {
			return nil, err
		}
		last = err
	}
	return nil, last
}

// contextAt authenticates id in a new overlay context that knows every API of apis and prefers the first.
func contextAt(id *Identity, refresh time.Duration, apis []string, book *overlayAPIs) (ziti.Context, error) {
	keyPEM, err := pki.EncodeKeyPEM(id.key)
	if err != nil {
		return nil, err
	}
	// ziti.Config.ZtAPIs would take the whole list, but sdk-golang v1.2.10 parses ZtAPI for every one of its
	// entries (NewContextWithOpts, contexts.go): the context would know the first API alone, once per entry. So
	// ZtAPI is the preferred one and the others are added to the context's pool of APIs below.
	cfg := &ziti.Config{
		ZtAPI: apis[0],
		ID: identity.Config{
			Cert: "pem:" + string(pki.EncodeCertsPEM(id.svid...)),
			Key:  "pem:" + string(keyPEM),
			CA:   "pem:" + string(pki.EncodeCertsPEM(id.overlayCA...)),
		},
	}
	zctx, err := ziti.NewContextWithOpts(cfg, &ziti.Options{RefreshInterval: refresh, SessionRefreshInterval: refresh})
	if err != nil {
		return nil, err
	}
	if impl, ok := zctx.(*ziti.ContextImpl); ok && impl.CtrlClt != nil && impl.CtrlClt.ClientApiClient != nil {
		clt := impl.CtrlClt.ClientApiClient
		// The pool starts at a random API unless one is active: make the preferred one active while it is alone.
		clt.AuthEnabledApi.GetClientTransportPool().GetActiveTransport()
		for _, s := range apis[1:] {
			if u, err := url.Parse(s); err == nil {
				addAPI(clt, u)
			}
		}
		impl.AddControllerUrlsUpdateListener(func(_ ziti.Context, urls []*url.URL) {
			// sdk-golang adds the APIs it learned without the session's credentials for calls that pass none
			// (ProcessControllers in edge-apis/clients.go, unlike NewClientApiClientWithConfig); add them again
			// with them.
			for _, u := range urls {
				addAPI(clt, u)
			}
			book.learn(urls)
		})
	}
	if err := authenticate(zctx); err != nil {
		return nil, err
	}
	if impl, ok := zctx.(*ziti.ContextImpl); ok && impl.CtrlClt != nil && impl.CtrlClt.ClientApiClient != nil {
		if t := impl.CtrlClt.AuthEnabledApi.GetClientTransportPool().GetActiveTransport(); t != nil && t.ApiUrl != nil {
			book.used(t.ApiUrl.String())
		}
	}
	return zctx, nil
}

// addAPI adds (or replaces) u in the pool of APIs of clt, authenticating calls that name no credentials with
// clt's session, as sdk-golang does for the APIs it is configured with.
func addAPI(clt *edgeapis.ClientApiClient, u *url.URL) {
	rt := edgeapis.NewRuntime(u, clt.Schemes, clt.HttpClient)
	rt.DefaultAuthentication = clt
	clt.AuthEnabledApi.GetClientTransportPool().Add(u, rt)
}
