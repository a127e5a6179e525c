package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd"
)

// The platform administrator's view of the controller cluster and its one change: removing a member that is
// gone for good, so that a replacement takes its place in both quorums (docs/cluster.md, "Replacing a member").

// clusterMembersBucket maps each overlay member ID to its NATS server's name. Each member writes its own record at
// every start: the two halves name their servers independently, and a removal needs both names.
const clusterMembersBucket = "umbra_cluster_members"

type clusterMemberRecord struct {
	NATS string `json:"nats"`
	// NATSPeer is the NATS server's raft peer ID, by which it is removed: a meta leader that joined after the
	// server left never learnt its name.
	NATSPeer string    `json:"nats_peer"`
	Ctrl     string    `json:"ctrl"`
	Started  time.Time `json:"started"`
}

// registerClusterMember writes this member's record; a lone controller has none.
func (s *Server) registerClusterMember(ctx context.Context, js jetstream.JetStream) error {
	if s.zc == nil || !s.zc.Clustered() || s.ns == nil {
		return nil
	}
	t, err := openTable[clusterMemberRecord](ctx, js, clusterMembersBucket)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.clusterMembers = t
	rec := clusterMemberRecord{NATS: s.ns.Name(), NATSPeer: s.ns.PeerID(), Ctrl: s.zc.CtrlEndpoint(), Started: time.Now().UTC()}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := t.kv.Put(ctx, s.zc.MemberID(), b); err != nil {
		return fmt.Errorf("controller: register cluster member %s: %w", s.zc.MemberID(), err)
	}
	return nil
}

func (s *Server) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathCluster, s.admin(func(ctx context.Context, c caller, _ []byte) (any, error) {
		if !isPlatformAdmin(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator sees the controller cluster")
		}
		return s.clusterStatus(ctx)
	}))
	mux.HandleFunc("POST "+api.PathClusterRemove, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
		if !isPlatformAdmin(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator removes controllers from the cluster")
		}
		var req api.RemoveClusterMemberRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		return s.removeClusterMember(ctx, c, req.Member)
	}))
}

func (s *Server) clustered() bool { return s.zc != nil && s.zc.Clustered() && s.ns != nil }

// clusterStatus is the cluster as this member sees it.
func (s *Server) clusterStatus(ctx context.Context) (api.ClusterStatus, error) {
	if !s.clustered() {
		return api.ClusterStatus{}, nil
	}
	members, err := s.zc.ClusterMembers()
	if err != nil {
		return api.ClusterStatus{}, internal(err)
	}
	size, peers, err := s.ns.MetaGroup()
	if err != nil {
		return api.ClusterStatus{}, internal(err)
	}
	online := map[string]bool{}
	st := api.ClusterStatus{Clustered: true, Member: s.zc.MemberID(), NATSSize: size}
	for _, p := range peers {
		online[p.ID] = p.Running()
		st.NATS = append(st.NATS, api.NATSPeer{Name: p.Name, Leader: p.Leader, Current: p.Current, Offline: p.Offline})
	}
	for _, m := range members {
		cm := api.ClusterMember{ID: m.ID, Addr: m.Addr, Leader: m.Leader, Voter: m.Voter, Connected: m.Connected || m.ID == st.Member}
		if rec, _, err := s.clusterMembers.get(ctx, m.ID); err == nil {
			cm.NATS, cm.Online = rec.NATS, online[rec.NATSPeer]
		} else if !errors.Is(err, errNotFound) {
			return api.ClusterStatus{}, internal(err)
		}
		st.Members = append(st.Members, cm)
	}
	return st, nil
}

// removeClusterMember removes a member that is gone from the overlay's raft configuration and its NATS server
// from the JetStream meta group, then forgets its record. Each step is skipped when already done, so a removal
// interrupted half-way is finished by asking again.
func (s *Server) removeClusterMember(ctx context.Context, c caller, id string) (api.RemoveClusterMemberResponse, error) {
	var out api.RemoveClusterMemberResponse
	switch {
	case strings.TrimSpace(id) == "":
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "no member given: name the member ID to remove (umbra cluster status lists them)")
	case !s.clustered():
		return out, failf(http.StatusConflict, api.CodeConflict, "this controller is not a cluster member: there is no member to remove")
	case id == s.zc.MemberID():
		return out, failf(http.StatusConflict, api.CodeConflict, "member %s answered this request itself: stop it for good, then remove it through another member", id)
	}
	members, err := s.zc.ClusterMembers()
	if err != nil {
		return out, internal(err)
	}
	var member *api.ClusterMember
	for _, m := range members {
		if m.ID == id {
			member = &api.ClusterMember{ID: m.ID, Addr: m.Addr, Connected: m.Connected}
		}
	}
	rec, _, err := s.clusterMembers.get(ctx, id)
	if err != nil && !errors.Is(err, errNotFound) {
		return out, internal(err)
	}
	registered := err == nil
	switch {
	case member == nil && !registered:
		return out, failf(http.StatusNotFound, api.CodeNotFound, "no member %s in the cluster (umbra cluster status lists them)", id)
	case member != nil && member.Connected:
		return out, failf(http.StatusConflict, api.CodeConflict, "member %s is connected: stop it for good before removing it (a removed member that still runs is refused by the others)", id)
	}
	// A follower holds raft connections to the leader only, so the overlay's view from here can miss a live
	// member; every NATS server is routed to every other, so a member whose server this one has a route to, or
	// that the meta group has seen recently, is running. A killed server loses its routes at once, while the
	// meta group marks it offline only minutes later.
	if registered {
		_, peers, err := s.ns.MetaGroup()
		if err != nil {
			return out, internal(err)
		}
		for _, p := range peers {
			if p.ID == rec.NATSPeer && p.Running() {
				return out, failf(http.StatusConflict, api.CodeConflict, "member %s is running (its NATS server %s is routed to this one or seen recently): stop it for good before removing it", id, rec.NATS)
			}
		}
	}
	if member != nil {
		if err := s.zc.RemoveMember(id); err != nil {
			return out, internal(err)
		}
	}
	out.Member = id
	if registered {
		if err := s.ns.RemovePeer(ctx, rec.NATS, rec.NATSPeer); err != nil && !errors.Is(err, natsd.ErrNotMember) {
			return out, internal(err)
		}
		out.NATS = rec.NATS
		if err := s.clusterMembers.kv.Delete(ctx, id); err != nil {
			return out, internal(err)
		}
	}
	s.record(ctx, audit.Record{Kind: "cluster.member_removed", Actor: c.id.String(), Decision: "allow",
		Data: jsonRaw(map[string]string{"member": id, "nats": out.NATS})})
	s.log.Info("cluster member removed", "member", id, "nats", out.NATS, "by", c.id.String())
	return out, nil
}
