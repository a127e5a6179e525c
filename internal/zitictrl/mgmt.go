package zitictrl

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-openapi/runtime"
	"github.com/openziti/edge-api/rest_management_api_client"
	"github.com/openziti/edge-api/rest_management_api_client/auth_policy"
	"github.com/openziti/edge-api/rest_management_api_client/certificate_authority"
	"github.com/openziti/edge-api/rest_management_api_client/edge_router"
	"github.com/openziti/edge-api/rest_management_api_client/edge_router_policy"
	"github.com/openziti/edge-api/rest_management_api_client/identity"
	"github.com/openziti/edge-api/rest_management_api_client/service"
	"github.com/openziti/edge-api/rest_management_api_client/service_edge_router_policy"
	"github.com/openziti/edge-api/rest_management_api_client/service_policy"
	"github.com/openziti/edge-api/rest_management_api_client/terminator"
	"github.com/openziti/edge-api/rest_model"
	"github.com/openziti/edge-api/rest_util"
)

// Mgmt is a client of the OpenZiti management API that logs in again when its API session has gone idle.
type Mgmt struct {
	url, user, password string
	pool                *x509.CertPool

	mu       sync.Mutex
	client   *rest_management_api_client.ZitiEdgeManagement
	lastUsed time.Time
}

// The API session times out after 30 minutes idle; log in again well before that.
const reloginAfter = 10 * time.Minute

func newMgmt(url, user, password string, pool *x509.CertPool) *Mgmt {
	return &Mgmt{url: url, user: user, password: password, pool: pool}
}

func (m *Mgmt) login() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loginLocked()
}

func (m *Mgmt) loginLocked() error {
	c, err := rest_util.NewEdgeManagementClientWithUpdb(m.user, m.password, m.url, m.pool)
	if err != nil {
		return fmt.Errorf("zitictrl: management login: %w", rest_util.WrapErr(err))
	}
	m.client, m.lastUsed = c, time.Now()
	return nil
}

// unansweredTries is how many times do makes a request the overlay's controller could not carry out in time
// (unanswered), waiting unansweredPause, then twice that, between tries.
const (
	unansweredTries = 4
	unansweredPause = 500 * time.Millisecond
)

// do runs fn with a logged-in client, logging in again once if the session was rejected, and tries it again
// while the overlay's controller answers that it could not carry it out (unanswered): in a cluster a member
// forwards every change to the raft leader and gives up after 5 s, or has no leader during an election. fn must
// be safe to repeat: such a change may still be applied after its answer, so a create tried again may find its
// name taken (CreateNewService knows it made it; the other create calls look it up) and a delete may find it gone.
func (m *Mgmt) do(what string, fn func(c *rest_management_api_client.ZitiEdgeManagement) error) error {
	return m.doContext(context.Background(), what, fn)
}

// doContext is do for a call bounded by ctx: no try starts after ctx ends (fn bounds its own request with ctx).
func (m *Mgmt) doContext(ctx context.Context, what string, fn func(c *rest_management_api_client.ZitiEdgeManagement) error) error {
	var err error
	pause := unansweredPause
	for try := 1; ; try++ {
		if err = m.doOnce(what, fn); !unanswered(err) || try == unansweredTries {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last try: %w)", ctx.Err(), err)
		case <-time.After(pause):
		}
		pause *= 2
	}
}

// unanswered reports whether err is the overlay's controller not carrying out a request for want of time or of a
// leader, rather than refusing it: a command forwarded to the raft leader that timed out (answered 500 with no
// body), a cluster with no leader, a connection the API closed without an answer (EOF or a reset: the server
// closed a kept-alive connection just as the request went out on it), or no answer within the client's own 10 s
// (a cluster member loaded enough to answer nothing in time; seen in a full-size scale run). Making such a
// request again is safe: a create whose first try was applied finds its name taken (see do), an update sets the
// same fields, and a delete of what is already gone succeeds.
func unanswered(err error) bool {
	var status *runtime.APIError
	if errors.As(err, &status) && status.Code >= 500 {
		return true
	}
	var apiErr *rest_util.APIFormattedError
	if errors.As(err, &apiErr) && apiErr.APIError != nil && apiErr.Code == "CLUSTER_NO_LEADER" {
		return true
	}
	var transport *url.Error
	return errors.As(err, &transport) &&
		(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || transport.Timeout())
}

func (m *Mgmt) doOnce(what string, fn func(c *rest_management_api_client.ZitiEdgeManagement) error) error {
	m.mu.Lock()
	if m.client == nil || time.Since(m.lastUsed) > reloginAfter {
		if err := m.loginLocked(); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	c := m.client
	m.lastUsed = time.Now()
	m.mu.Unlock()

	err := fn(c)
	if err != nil && strings.Contains(err.Error(), "Unauthorized") {
		m.mu.Lock()
		lerr := m.loginLocked()
		c = m.client
		m.mu.Unlock()
		if lerr != nil {
			return lerr
		}
		err = fn(c)
	}
	if err != nil {
		return fmt.Errorf("zitictrl: %s: %w", what, rest_util.WrapErr(err))
	}
	return nil
}

func nameFilter(name string) *string {
	return ptr(fmt.Sprintf("name = %s", strconv.Quote(name)))
}

func ptr[T any](v T) *T { return &v }

// EnsureCA registers certPEM as a third-party CA whose certificates authenticate identities matched by their
// SPIFFE ID (the first spiffe:// URI SAN becomes the externalId). prove signs a certificate with CN = the
// verification token to prove possession of the CA key.
func (m *Mgmt) EnsureCA(name string, certPEM []byte, prove func(token string) (string, error)) error {
	var id string
	var verified bool
	err := m.do("list CAs", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.CertificateAuthority.ListCas(&certificate_authority.ListCasParams{Filter: nameFilter(name)}, nil)
		if err != nil {
			return err
		}
		for _, ca := range resp.Payload.Data {
			id, verified = *ca.ID, ca.IsVerified != nil && *ca.IsVerified
		}
		return nil
	})
	if err != nil {
		return err
	}
	if id == "" {
		err = m.do("create CA", func(c *rest_management_api_client.ZitiEdgeManagement) error {
			resp, err := c.CertificateAuthority.CreateCa(&certificate_authority.CreateCaParams{Ca: &rest_model.CaCreate{
				Name:                      ptr(name),
				CertPem:                   ptr(string(certPEM)),
				IsAuthEnabled:             ptr(true),
				IsAutoCaEnrollmentEnabled: ptr(false),
				IsOttCaEnrollmentEnabled:  ptr(false),
				IdentityRoles:             rest_model.Roles{},
				ExternalIDClaim: &rest_model.ExternalIDClaim{
					Location:        ptr(rest_model.ExternalIDClaimLocationSANURI),
					Matcher:         ptr(rest_model.ExternalIDClaimMatcherSCHEME),
					MatcherCriteria: ptr("spiffe"),
					Parser:          ptr(rest_model.ExternalIDClaimParserNONE),
					ParserCriteria:  ptr(""),
					Index:           ptr(int64(0)),
				},
			}}, nil)
			if err != nil {
				return err
			}
			id = resp.Payload.Data.ID
			return nil
		})
		if err != nil {
			return err
		}
	}
	if verified {
		return nil
	}
	var token string
	err = m.do("read CA", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.CertificateAuthority.DetailCa(&certificate_authority.DetailCaParams{ID: id}, nil)
		if err != nil {
			return err
		}
		token = resp.Payload.Data.VerificationToken.String()
		return nil
	})
	if err != nil {
		return err
	}
	proof, err := prove(token)
	if err != nil {
		return fmt.Errorf("zitictrl: prove CA: %w", err)
	}
	return m.do("verify CA", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.CertificateAuthority.VerifyCa(&certificate_authority.VerifyCaParams{ID: id, Certificate: proof}, nil)
		return err
	})
}

// EnsureAuthPolicy creates (or finds) an authentication policy that accepts only unexpired certificates.
func (m *Mgmt) EnsureAuthPolicy(name string) (string, error) {
	var id string
	err := m.do("list auth policies", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.AuthPolicy.ListAuthPolicies(&auth_policy.ListAuthPoliciesParams{Filter: nameFilter(name)}, nil)
		if err != nil {
			return err
		}
		for _, p := range resp.Payload.Data {
			id = *p.ID
		}
		return nil
	})
	if err != nil || id != "" {
		return id, err
	}
	err = m.do("create auth policy", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.AuthPolicy.CreateAuthPolicy(&auth_policy.CreateAuthPolicyParams{AuthPolicy: &rest_model.AuthPolicyCreate{
			Name: ptr(name),
			Primary: &rest_model.AuthPolicyPrimary{
				Cert:   &rest_model.AuthPolicyPrimaryCert{Allowed: ptr(true), AllowExpiredCerts: ptr(false)},
				ExtJWT: &rest_model.AuthPolicyPrimaryExtJWT{Allowed: ptr(false), AllowedSigners: []string{}},
				Updb: &rest_model.AuthPolicyPrimaryUpdb{Allowed: ptr(false), LockoutDurationMinutes: ptr(int64(0)),
					MaxAttempts: ptr(int64(0)), MinPasswordLength: ptr(int64(5)), RequireMixedCase: ptr(false),
					RequireNumberChar: ptr(false), RequireSpecialChar: ptr(false)},
			},
			Secondary: &rest_model.AuthPolicySecondary{RequireTotp: ptr(false)},
		}}, nil)
		if err != nil {
			return err
		}
		id = resp.Payload.Data.ID
		return nil
	})
	return id, err
}

// EnsureEdgeRouterPolicies lets every identity use every router, and every service run over every router.
func (m *Mgmt) EnsureEdgeRouterPolicies() error {
	var have, haveSvc bool
	err := m.do("list edge router policies", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.EdgeRouterPolicy.ListEdgeRouterPolicies(&edge_router_policy.ListEdgeRouterPoliciesParams{Filter: nameFilter("umbra-all-routers")}, nil)
		if err != nil {
			return err
		}
		have = len(resp.Payload.Data) > 0
		sresp, err := c.ServiceEdgeRouterPolicy.ListServiceEdgeRouterPolicies(&service_edge_router_policy.ListServiceEdgeRouterPoliciesParams{Filter: nameFilter("umbra-all-routers")}, nil)
		if err != nil {
			return err
		}
		haveSvc = len(sresp.Payload.Data) > 0
		return nil
	})
	if err != nil {
		return err
	}
	if !have {
		err = m.do("create edge router policy", func(c *rest_management_api_client.ZitiEdgeManagement) error {
			_, err := c.EdgeRouterPolicy.CreateEdgeRouterPolicy(&edge_router_policy.CreateEdgeRouterPolicyParams{Policy: &rest_model.EdgeRouterPolicyCreate{
				Name: ptr("umbra-all-routers"), Semantic: ptr(rest_model.SemanticAnyOf),
				IdentityRoles: rest_model.Roles{"#all"}, EdgeRouterRoles: rest_model.Roles{"#all"},
			}}, nil)
			return err
		})
		if err != nil {
			return err
		}
	}
	if !haveSvc {
		return m.do("create service edge router policy", func(c *rest_management_api_client.ZitiEdgeManagement) error {
			_, err := c.ServiceEdgeRouterPolicy.CreateServiceEdgeRouterPolicy(&service_edge_router_policy.CreateServiceEdgeRouterPolicyParams{Policy: &rest_model.ServiceEdgeRouterPolicyCreate{
				Name: ptr("umbra-all-routers"), Semantic: ptr(rest_model.SemanticAnyOf),
				ServiceRoles: rest_model.Roles{"#all"}, EdgeRouterRoles: rest_model.Roles{"#all"},
			}}, nil)
			return err
		})
	}
	return nil
}

// Identity is what the overlay knows of one workload.
type Identity struct {
	ID         string
	Name       string
	ExternalID string
	Attributes []string
	Disabled   bool
}

// FindIdentity looks an identity up by its externalId (the SPIFFE ID). ok is false if there is none.
func (m *Mgmt) FindIdentity(externalID string) (Identity, bool, error) {
	var out Identity
	var ok bool
	err := m.do("find identity", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.Identity.ListIdentities(&identity.ListIdentitiesParams{Filter: ptr("externalId = " + strconv.Quote(externalID))}, nil)
		if err != nil {
			return err
		}
		for _, d := range resp.Payload.Data {
			out, ok = Identity{ID: *d.ID, Name: *d.Name, Disabled: d.Disabled != nil && *d.Disabled}, true
			if d.ExternalID != nil {
				out.ExternalID = *d.ExternalID
			}
			if d.RoleAttributes != nil {
				out.Attributes = *d.RoleAttributes
			}
		}
		return nil
	})
	return out, ok, err
}

// CreateIdentity creates an identity authenticated by certificates whose SPIFFE ID equals externalID, or returns
// the one of that name if it exists.
func (m *Mgmt) CreateIdentity(externalID, authPolicyID string, attributes []string) (string, error) {
	var id string
	attrs := rest_model.Attributes(slices.Clone(attributes))
	err := m.do("create identity", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.Identity.CreateIdentity(&identity.CreateIdentityParams{Identity: &rest_model.IdentityCreate{
			Name: ptr(externalID), ExternalID: ptr(externalID), AuthPolicyID: ptr(authPolicyID),
			IsAdmin: ptr(false), Type: ptr(rest_model.IdentityTypeDefault), RoleAttributes: &attrs,
		}}, nil)
		if err != nil {
			return err
		}
		id = resp.Payload.Data.ID
		return nil
	})
	// A create tried again after an earlier one was applied late (do), or one by another member first: the
	// identity of that name is the one asked for (its name is its externalId), once this member's copy has it.
	if nameTaken(err) {
		lookUpTaken(func() bool {
			found, ok, ferr := m.FindIdentity(externalID)
			if ferr == nil && ok {
				id, err = found.ID, nil
			}
			return ok
		})
	}
	return id, err
}

// SetAttributes replaces an identity's role attributes.
func (m *Mgmt) SetAttributes(id string, attributes []string) error {
	attrs := rest_model.Attributes(slices.Clone(attributes))
	return m.do("patch identity", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.Identity.PatchIdentity(&identity.PatchIdentityParams{ID: id, Identity: &rest_model.IdentityPatch{RoleAttributes: &attrs}}, nil)
		return err
	})
}

// DisableIdentity disables an identity indefinitely; with legacy API sessions this also drops its sessions.
func (m *Mgmt) DisableIdentity(id string) error {
	return m.do("disable identity", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.Identity.DisableIdentity(&identity.DisableIdentityParams{ID: id, Disable: &rest_model.DisableParams{DurationMinutes: ptr(int64(0))}}, nil)
		return err
	})
}

// EnableIdentity lifts a DisableIdentity: the identity may authenticate again.
func (m *Mgmt) EnableIdentity(id string) error {
	return m.do("enable identity", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.Identity.EnableIdentity(&identity.EnableIdentityParams{ID: id}, nil)
		return err
	})
}

// EnsureService creates a service (encrypted end to end) carrying the given role attributes, or gives the
// service of that name those attributes if it carries others.
func (m *Mgmt) EnsureService(name string, attributes []string) (id string, err error) {
	if id, err = m.ensureServiceOnce(name, attributes); nameTaken(err) {
		lookUpTaken(func() bool {
			id, err = m.ensureServiceOnce(name, attributes)
			return !nameTaken(err)
		})
	}
	return id, err
}

// lookUpTaken calls found until it reports true or takenFor has passed, pausing takenPause before the first
// call, twice that before the second, and so on up to takenPauseMax. The create and Ensure calls look a name up
// this way when their create is refused because the name is taken: in a cluster the member answering reads its
// own copy of the overlay's store, which may not have applied yet the create that took the name (another
// member's, or an earlier create of ours applied after its answer, Mgmt.do). Loaded members' copies were seen
// more than 7 s behind their leader (two cores shared by three controllers, two routers and the load).
func lookUpTaken(found func() bool) {
	deadline := time.Now().Add(takenFor)
	for pause := takenPause; time.Now().Before(deadline); pause = min(2*pause, takenPauseMax) {
		time.Sleep(pause)
		if found() {
			return
		}
	}
}

const (
	takenFor      = 20 * time.Second
	takenPause    = 250 * time.Millisecond
	takenPauseMax = 2 * time.Second
)

func (m *Mgmt) ensureServiceOnce(name string, attributes []string) (string, error) {
	var (
		id   string
		same bool
	)
	err := m.do("list services", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.Service.ListServices(&service.ListServicesParams{Filter: nameFilter(name)}, nil)
		if err != nil {
			return err
		}
		for _, s := range resp.Payload.Data {
			id, same = *s.ID, SameRoles(attributesOf(s.RoleAttributes), attributes)
		}
		return nil
	})
	switch {
	case err != nil:
		return "", err
	case id != "" && !same:
		return id, m.SetServiceAttributes(id, name, attributes)
	case id != "":
		return id, nil
	}
	return m.createService(name, attributes, nil)
}

// SetServiceAttributes replaces the role attributes of the service id, named name, which Umbra created (end to
// end encrypted, no configs).
func (m *Mgmt) SetServiceAttributes(id, name string, attributes []string) error {
	return m.do("update service", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.Service.UpdateService(&service.UpdateServiceParams{ID: id, Service: &rest_model.ServiceUpdate{
			Name: ptr(name), EncryptionRequired: true, RoleAttributes: nonNil(slices.Clone(attributes)), Configs: []string{},
		}}, nil)
		return err
	})
}

// Service is an overlay service as Services lists it.
type Service struct {
	ID         string
	Attributes []string
	CreatedAt  time.Time
}

// Services lists every service whose name starts with prefix, by name.
func (m *Mgmt) Services(prefix string) (map[string]Service, error) {
	out := map[string]Service{}
	filter := fmt.Sprintf("name contains %q", prefix)
	err := m.pages("list services", func(c *rest_management_api_client.ZitiEdgeManagement, limit, offset int64) (int, error) {
		resp, err := c.Service.ListServices(&service.ListServicesParams{Filter: &filter, Limit: &limit, Offset: &offset}, nil)
		if err != nil {
			return 0, err
		}
		for _, s := range resp.Payload.Data {
			if strings.HasPrefix(*s.Name, prefix) {
				out[*s.Name] = Service{ID: *s.ID, Attributes: attributesOf(s.RoleAttributes), CreatedAt: time.Time(*s.CreatedAt)}
			}
		}
		return len(resp.Payload.Data), nil
	})
	return out, err
}

func attributesOf(a *rest_model.Attributes) []string {
	if a == nil {
		return nil
	}
	return slices.Clone(*a)
}

// pages calls list with successive pages of a listing until one comes back short.
func (m *Mgmt) pages(what string, list func(c *rest_management_api_client.ZitiEdgeManagement, limit, offset int64) (int, error)) error {
	const page = 500
	for offset := int64(0); ; offset += page {
		var n int
		err := m.do(what, func(c *rest_management_api_client.ZitiEdgeManagement) error {
			var err error
			n, err = list(c, page, offset)
			return err
		})
		if err != nil || n < page {
			return err
		}
	}
}

// HostsService tells whether the overlay's store holds a terminator of the service named service hosted by the
// overlay identity hostID: whether a dial of it can be routed. A router may count a bind established before the
// controller has its terminator (docs/overlay-reliability.md). The members of a cluster host as one identity,
// so another member's terminator counts too. It returns by ctx's end.
func (m *Mgmt) HostsService(ctx context.Context, service, hostID string) (bool, error) {
	var found bool
	err := m.doContext(ctx, "list terminators", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.Terminator.ListTerminators(&terminator.ListTerminatorsParams{
			Context: ctx,
			Filter:  ptr("service.name = " + strconv.Quote(service) + " and hostId = " + strconv.Quote(hostID)),
			Limit:   ptr(int64(1))}, nil)
		if err != nil {
			return err
		}
		found = len(resp.Payload.Data) > 0
		return nil
	})
	return found, err
}

// CreateNewService is EnsureService for a name nobody else creates, one carrying an id the caller just drew (an
// advertisement's). It creates the service first, so a new service costs no listing of the services: OpenZiti
// answers a list filtered by name by reading every service.
//
// A create refused because the name is taken after an earlier try of this call went unanswered (Mgmt.do) was
// refused by the overlay's leader, whose store therefore holds the service that try made, with these
// attributes: that is success, although this member's copy of the store may not show it yet. A create refused
// on its first try meets a service made otherwise (a create that stopped half way); it is looked up and given
// these attributes.
func (m *Mgmt) CreateNewService(name string, attributes []string) error {
	late := false
	_, err := m.createService(name, attributes, func(err error) { late = late || unanswered(rest_util.WrapErr(err)) })
	switch {
	case nameTaken(err) && late:
		return nil
	case nameTaken(err):
		_, err = m.EnsureService(name, attributes)
	}
	return err
}

// createService creates a service; tried, if not nil, is told the outcome of each try.
func (m *Mgmt) createService(name string, attributes []string, tried func(error)) (string, error) {
	var id string
	err := m.do("create service", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.Service.CreateService(&service.CreateServiceParams{Service: &rest_model.ServiceCreate{
			Name: ptr(name), EncryptionRequired: ptr(true), RoleAttributes: slices.Clone(attributes), Configs: []string{},
		}}, nil)
		if tried != nil {
			tried(err)
		}
		if err != nil {
			return err
		}
		id = resp.Payload.Data.ID
		return nil
	})
	return id, err
}

// CreateOrUpdateServicePolicy is EnsureServicePolicy for a name that is most likely new: it creates the policy
// first and looks it up (and replaces its roles if they differ) only when the create is refused because the name
// is taken. Either way the policy ends with the given roles.
func (m *Mgmt) CreateOrUpdateServicePolicy(name, kind string, identityRoles, serviceRoles []string) error {
	typ, err := policyType(kind)
	if err != nil {
		return err
	}
	err = m.createServicePolicy(name, typ, nonNil(identityRoles), nonNil(serviceRoles))
	if nameTaken(err) {
		return m.EnsureServicePolicy(name, kind, identityRoles, serviceRoles)
	}
	return err
}

func (m *Mgmt) createServicePolicy(name string, typ rest_model.DialBind, identityRoles, serviceRoles []string) error {
	return m.do("create service policy", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.ServicePolicy.CreateServicePolicy(&service_policy.CreateServicePolicyParams{Policy: &rest_model.ServicePolicyCreate{
			Name: ptr(name), Type: &typ, Semantic: ptr(rest_model.SemanticAnyOf),
			IdentityRoles: identityRoles, ServiceRoles: serviceRoles, PostureCheckRoles: rest_model.Roles{},
		}}, nil)
		return err
	})
}

// nameTaken reports whether err is OpenZiti refusing a create because an entity of that type has the name: the
// name check before the create ("name must be unique") or the name index's ("duplicate value ... in unique
// index").
func nameTaken(err error) bool {
	var apiErr *rest_util.APIFormattedError
	if !errors.As(err, &apiErr) || apiErr.APIError == nil || apiErr.Cause == nil {
		return false
	}
	return apiErr.Cause.Field == "name" && strings.Contains(apiErr.Cause.Reason, "unique")
}

func policyType(kind string) (rest_model.DialBind, error) {
	switch kind {
	case "Dial":
		return rest_model.DialBindDial, nil
	case "Bind":
		return rest_model.DialBindBind, nil
	}
	return "", errors.New("zitictrl: policy kind must be Dial or Bind")
}

// EnsureServicePolicy makes a Dial or Bind policy (kind "Dial" or "Bind") of that name grant identityRoles the
// services of serviceRoles: it creates the policy if absent and replaces its roles if they differ.
func (m *Mgmt) EnsureServicePolicy(name, kind string, identityRoles, serviceRoles []string) error {
	err := m.ensureServicePolicyOnce(name, kind, identityRoles, serviceRoles)
	if nameTaken(err) {
		lookUpTaken(func() bool {
			err = m.ensureServicePolicyOnce(name, kind, identityRoles, serviceRoles)
			return !nameTaken(err)
		})
	}
	return err
}

func (m *Mgmt) ensureServicePolicyOnce(name, kind string, identityRoles, serviceRoles []string) error {
	typ, err := policyType(kind)
	if err != nil {
		return err
	}
	identityRoles, serviceRoles = nonNil(identityRoles), nonNil(serviceRoles)
	var (
		id   string
		same bool
	)
	err = m.do("list service policies", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.ServicePolicy.ListServicePolicies(&service_policy.ListServicePoliciesParams{Filter: nameFilter(name)}, nil)
		if err != nil {
			return err
		}
		for _, p := range resp.Payload.Data {
			id = *p.ID
			same = SameRoles(p.IdentityRoles, identityRoles) && SameRoles(p.ServiceRoles, serviceRoles)
		}
		return nil
	})
	switch {
	case err != nil || same:
		return err
	case id != "":
		return m.do("update service policy", func(c *rest_management_api_client.ZitiEdgeManagement) error {
			_, err := c.ServicePolicy.UpdateServicePolicy(&service_policy.UpdateServicePolicyParams{ID: id, Policy: &rest_model.ServicePolicyUpdate{
				Name: ptr(name), Type: &typ, Semantic: ptr(rest_model.SemanticAnyOf),
				IdentityRoles: identityRoles, ServiceRoles: serviceRoles, PostureCheckRoles: rest_model.Roles{},
			}}, nil)
			return err
		})
	}
	return m.createServicePolicy(name, typ, identityRoles, serviceRoles)
}

// ServicePolicy is a service policy as ServicePolicies lists it.
type ServicePolicy struct {
	ID            string
	Kind          string // "Dial" or "Bind"
	IdentityRoles []string
	ServiceRoles  []string
}

// ServicePolicies lists every service policy whose name starts with prefix, by name.
func (m *Mgmt) ServicePolicies(prefix string) (map[string]ServicePolicy, error) {
	out := map[string]ServicePolicy{}
	filter := fmt.Sprintf("name contains %q", prefix)
	err := m.pages("list service policies", func(c *rest_management_api_client.ZitiEdgeManagement, limit, offset int64) (int, error) {
		resp, err := c.ServicePolicy.ListServicePolicies(&service_policy.ListServicePoliciesParams{Filter: &filter,
			Limit: &limit, Offset: &offset}, nil)
		if err != nil {
			return 0, err
		}
		for _, p := range resp.Payload.Data {
			if strings.HasPrefix(*p.Name, prefix) {
				out[*p.Name] = ServicePolicy{ID: *p.ID, Kind: string(*p.Type),
					IdentityRoles: slices.Clone(p.IdentityRoles), ServiceRoles: slices.Clone(p.ServiceRoles)}
			}
		}
		return len(resp.Payload.Data), nil
	})
	return out, err
}

// DeleteServicePolicy deletes the service policy id; one already gone is not an error.
func (m *Mgmt) DeleteServicePolicy(id string) error {
	return m.do("delete service policy", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.ServicePolicy.DeleteServicePolicy(&service_policy.DeleteServicePolicyParams{ID: id}, nil)
		var gone *service_policy.DeleteServicePolicyNotFound
		if errors.As(err, &gone) {
			return nil
		}
		return err
	})
}

// SameRoles reports whether two role lists hold the same roles, in any order and counting a repeated one once.
func SameRoles(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// CreateEdgeRouter creates an edge router and returns its id and one-time enrollment JWT.
func (m *Mgmt) CreateEdgeRouter(name string) (id, jwt string, err error) {
	err = m.do("create edge router", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.EdgeRouter.CreateEdgeRouter(&edge_router.CreateEdgeRouterParams{EdgeRouter: &rest_model.EdgeRouterCreate{
			Name: ptr(name), RoleAttributes: &rest_model.Attributes{"umbra.router"},
		}}, nil)
		if err != nil {
			return err
		}
		id = resp.Payload.Data.ID
		d, err := c.EdgeRouter.DetailEdgeRouter(&edge_router.DetailEdgeRouterParams{ID: id}, nil)
		if err != nil {
			return err
		}
		if d.Payload.Data.EnrollmentJWT == nil {
			return errors.New("router has no enrollment token")
		}
		jwt = *d.Payload.Data.EnrollmentJWT
		return nil
	})
	return id, jwt, err
}

// RouterOnline reports whether the named edge router is connected.
func (m *Mgmt) RouterOnline(name string) (bool, error) {
	var online bool
	err := m.do("list edge routers", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.EdgeRouter.ListEdgeRouters(&edge_router.ListEdgeRoutersParams{Filter: nameFilter(name)}, nil)
		if err != nil {
			return err
		}
		for _, r := range resp.Payload.Data {
			online = r.IsOnline != nil && *r.IsOnline
		}
		return nil
	})
	return online, err
}

// AnyRouterOnline reports whether at least one edge router is connected.
func (m *Mgmt) AnyRouterOnline() (bool, error) {
	var online bool
	err := m.do("list edge routers", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		resp, err := c.EdgeRouter.ListEdgeRouters(&edge_router.ListEdgeRoutersParams{}, nil)
		if err != nil {
			return err
		}
		for _, r := range resp.Payload.Data {
			online = online || r.IsOnline != nil && *r.IsOnline
		}
		return nil
	})
	return online, err
}

// EdgeRouter is an edge router as the OpenZiti controller knows it.
type EdgeRouter struct {
	Name      string
	Online    bool // connected to the controller now
	Verified  bool // enrolled
	Disabled  bool
	Version   string // the software version it reported, if online once
	CreatedAt time.Time
}

// EdgeRouters lists every edge router, a page of 500 at a time.
func (m *Mgmt) EdgeRouters() ([]EdgeRouter, error) {
	var out []EdgeRouter
	err := m.do("list edge routers", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		out = out[:0]
		const page = 500
		for offset := int64(0); ; offset += page {
			resp, err := c.EdgeRouter.ListEdgeRouters(&edge_router.ListEdgeRoutersParams{Limit: ptr(int64(page)), Offset: ptr(offset)}, nil)
			if err != nil {
				return err
			}
			for _, r := range resp.Payload.Data {
				er := EdgeRouter{Online: r.IsOnline != nil && *r.IsOnline, Verified: r.IsVerified != nil && *r.IsVerified,
					Disabled: r.Disabled != nil && *r.Disabled}
				if r.Name != nil {
					er.Name = *r.Name
				}
				if r.VersionInfo != nil && r.VersionInfo.Version != nil {
					er.Version = *r.VersionInfo.Version
				}
				if r.CreatedAt != nil {
					er.CreatedAt = time.Time(*r.CreatedAt)
				}
				out = append(out, er)
			}
			if len(resp.Payload.Data) < page {
				return nil
			}
		}
	})
	return out, err
}
