package zitictrl

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	nfpem "github.com/openziti/foundation/v2/pem"
	"github.com/openziti/storage/boltz"
	"github.com/openziti/ziti/controller/change"
	"github.com/openziti/ziti/controller/model"
	"github.com/openziti/ziti/controller/models"
)

// listedCheck is how often a cluster member checks that the overlay's replicated controllers store still holds
// its own record.
const listedCheck = 5 * time.Second

// keepListed keeps this member's record in the overlay's controllers store (what GET /controllers tells SDKs,
// and ClientAPIURLs) until the controller stops.
//
// OpenZiti v1.7.2 can lose that record for good. When two mesh connections from one peer race ("connection from
// peer … already present"), the leader's DeleteRemovedPeers can delete the record of a member that is still a
// voter, while that member's UpdateSelfOnNewLeader only updates its record and fails with NOT_FOUND ("could not
// update self"). Nothing creates it again until the next leadership change, and meanwhile no SDK learns that
// member's API. So every member checks its own record and creates it again if it is gone.
func (c *Controller) keepListed() {
	done := c.fabric.GetCloseNotifyChannel()
	tick := time.NewTicker(listedCheck)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		relisted, err := c.relist()
		switch {
		case err != nil:
			c.log.Debug("checking this member's record in the overlay's controllers store failed", "err", err)
		case relisted:
			c.log.Warn("the overlay's controllers store had lost this member's record; it is listed again", "member", c.MemberID())
		}
	}
}

// relist creates this member's record in the overlay's controllers store if the member is a voter of a cluster
// with a leader and the record is missing. It reports whether it created one.
func (c *Controller) relist() (bool, error) {
	rc := c.raftController()
	if rc == nil || rc.IsLeaderless() {
		return false, nil
	}
	id := c.MemberID()
	members, err := rc.ListMembers()
	if err != nil {
		return false, fmt.Errorf("list cluster members: %w", err)
	}
	voter := false
	for _, m := range members {
		voter = voter || (m.Id == id && m.Voter)
	}
	if !voter { // not joined yet, or removed: the record is rightly absent
		return false, nil
	}
	ctrls := c.edge.AppEnv.Managers.Controller
	if _, err := ctrls.Read(id); err == nil {
		return false, nil
	} else if !boltz.IsErrNotFoundErr(err) {
		return false, fmt.Errorf("read this member's record: %w", err)
	}
	rec, err := c.ownRecord()
	if err != nil {
		return false, err
	}
	ctx := change.New().SetSourceType("umbra.relist").SetChangeAuthorType(change.AuthorTypeController)
	if err := ctrls.Create(rec, ctx); err != nil {
		return false, fmt.Errorf("create this member's record: %w", err)
	}
	return true, nil
}

// ownRecord is this member's record as OpenZiti's ControllerManager writes it when the member joins.
func (c *Controller) ownRecord() (*model.Controller, error) {
	addr, id, _ := c.fabric.GetRaftInfo()
	signer := c.edge.AppEnv.GetRootTlsJwtSigner()
	if signer == nil || signer.TlsCerts == nil || len(signer.TlsCerts.Certificate) == 0 {
		return nil, errors.New("this member has no server certificate")
	}
	cert, err := x509.ParseCertificate(signer.TlsCerts.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("this member's server certificate: %w", err)
	}
	apis, _ := c.fabric.GetApiAddresses()
	out := map[string][]model.ApiAddress{}
	for name, list := range apis {
		for _, a := range list {
			out[name] = append(out[name], model.ApiAddress{Url: a.Url, Version: a.Version})
		}
	}
	return &model.Controller{
		BaseEntity:   models.BaseEntity{Id: id},
		Name:         cert.Subject.CommonName,
		CertPem:      nfpem.EncodeToString(cert),
		Fingerprint:  nfpem.FingerprintFromCertificate(cert),
		CtrlAddress:  addr,
		IsOnline:     true,
		LastJoinedAt: time.Now(),
		ApiAddresses: out,
	}, nil
}
