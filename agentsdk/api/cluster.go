package api

// The controller cluster, for the platform administrator (docs/cluster.md).
const (
	PathCluster       = "/v1/cluster"
	PathClusterRemove = "/v1/cluster/remove"
)

// ClusterStatus is a controller cluster as the member that answered sees it.
type ClusterStatus struct {
	// Clustered is false for a lone controller; the rest is then empty.
	Clustered bool `json:"clustered"`
	// Member is the overlay member ID of the controller that answered.
	Member string `json:"member,omitempty"`
	// Members are the overlay controller cluster's members (its raft configuration).
	Members []ClusterMember `json:"members,omitempty"`
	// NATSSize is the number of servers the JetStream meta group counts towards its quorum.
	NATSSize int `json:"nats_size,omitempty"`
	// NATS are the JetStream meta group's servers as the answering member sees them.
	NATS []NATSPeer `json:"nats,omitempty"`
}

// ClusterMember is one controller of the cluster.
type ClusterMember struct {
	ID string `json:"id"`
	// Addr is the member's raft address, tls:HOST:CTRL-PORT.
	Addr   string `json:"addr"`
	Leader bool   `json:"leader,omitempty"`
	Voter  bool   `json:"voter"`
	// Connected: the answering member holds a raft connection to it (itself included). A follower connects
	// to the leader only, so from a follower another live follower shows as not connected.
	Connected bool `json:"connected"`
	// Online: its NATS server is heard from (every server hears every other's periodic state, so this is the
	// same from any member).
	Online bool `json:"online"`
	// NATS is the name of the member's NATS server, as the member registered it at its start ("" if it never
	// did).
	NATS string `json:"nats,omitempty"`
}

// NATSPeer is a server of the JetStream meta group.
type NATSPeer struct {
	Name    string `json:"name"`
	Leader  bool   `json:"leader,omitempty"`
	Current bool   `json:"current"`
	Offline bool   `json:"offline,omitempty"`
}

// RemoveClusterMemberRequest removes a controller that is gone for good from the cluster: from the overlay's raft
// configuration and its NATS server from the JetStream meta group, whose replicas then move to the others.
type RemoveClusterMemberRequest struct {
	Member string `json:"member"`
}

// RemoveClusterMemberResponse says what was removed.
type RemoveClusterMemberResponse struct {
	Member string `json:"member"`
	// NATS is the NATS server removed with it ("" if the member had registered none).
	NATS string `json:"nats,omitempty"`
}
