// Package devcluster runs a cluster of umbra controllers and routers on one machine, each a child process of
// the same umbra binary: what `umbra dev --controllers N --routers M` starts for trying a cluster out.
//
// The cluster is the one docs/cluster.md describes, made on loopback: the first controller initialises the
// overlay's raft cluster with keys exported before it starts, the others join it with those keys installed into
// their data directories, their NATS servers route to each other, and every stream and bucket is kept in three
// copies. The first controller registers the routers and writes their enrollment tokens. Ports are chosen free
// once and kept in DIR/cluster.json, so a later start with the same directory restarts the same cluster.
//
// At the first start of a replicated cluster a controller may stop before it is ready (its streams were created
// before every NATS server had met) or never get an answer to its creates; Run starts such a member again, as
// docs/cluster.md tells an operator to. Children run in process groups of their own, so that a terminal's
// interrupt reaches only the parent, which stops the routers and then the controllers; on Linux they are also
// sent SIGTERM when the parent dies, however it dies.
package devcluster
