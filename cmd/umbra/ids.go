package main

import (
	"context"
	"fmt"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The SDK takes checked IDs; these parse the ones given on the command line, with an error that says what a
// valid one looks like and where to find it.

func parseWorkgroupID(s string) (workgroups.WorkgroupID, error) {
	id, err := workgroups.ParseWorkgroupID(s)
	if err != nil {
		return id, fmt.Errorf("%q is not a workgroup: give it as <org>/<name> (see `umbra workgroup list`)", s)
	}
	return id, nil
}

func parseAdvertisementID(s string) (workgroups.AdvertisementID, error) {
	id, err := workgroups.ParseAdvertisementID(s)
	if err != nil {
		return id, fmt.Errorf("%q is not an advertisement ID: copy one from `umbra discover`", s)
	}
	return id, nil
}

func parseSessionID(s string) (workgroups.SessionID, error) {
	id, err := workgroups.ParseSessionID(s)
	if err != nil {
		return id, fmt.Errorf("%q is not a session ID: copy one from `umbra session list`", s)
	}
	return id, nil
}

// openSession returns a handle on the session named on the command line.
func openSession(ctx context.Context, a *agentsdk.Agent, id string) (*agentsdk.Session, error) {
	sid, err := parseSessionID(id)
	if err != nil {
		return nil, err
	}
	return a.Session(ctx, sid)
}

func acceptSession(ctx context.Context, a *agentsdk.Agent, id, reason string) (*agentsdk.Session, error) {
	sid, err := parseSessionID(id)
	if err != nil {
		return nil, err
	}
	return a.Accept(ctx, sid, reason)
}

func rejectSession(ctx context.Context, a *agentsdk.Agent, id, reason string) error {
	sid, err := parseSessionID(id)
	if err != nil {
		return err
	}
	return a.Reject(ctx, sid, reason)
}

func auditSession(ctx context.Context, a *agentsdk.Agent, id string) (api.SessionAudit, error) {
	sid, err := parseSessionID(id)
	if err != nil {
		return api.SessionAudit{}, err
	}
	return a.Controller().AuditSession(ctx, sid)
}
