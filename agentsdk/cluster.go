package agentsdk

import (
	"context"
	"fmt"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// Cluster returns the controller cluster as the member that answered sees it (platform admin only); a lone
// controller answers Clustered false.
func (c *Controller) Cluster(ctx context.Context) (api.ClusterStatus, error) {
	var out api.ClusterStatus
	if err := c.get(ctx, api.PathCluster, &out); err != nil {
		return out, fmt.Errorf("agentsdk: cluster status: %w", err)
	}
	return out, nil
}

// RemoveClusterMember removes a controller that is gone for good from the cluster (platform admin only): from
// the overlay's raft configuration and its NATS server from the JetStream meta group. A connected member, or the
// member answering, is refused. Asking again finishes a removal that was interrupted.
func (c *Controller) RemoveClusterMember(ctx context.Context, member string) (api.RemoveClusterMemberResponse, error) {
	var out api.RemoveClusterMemberResponse
	if err := c.post(ctx, api.PathClusterRemove, api.RemoveClusterMemberRequest{Member: member}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: remove cluster member %s: %w", member, err)
	}
	return out, nil
}
