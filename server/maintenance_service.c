/* The Maintenance service: Status, which etcdctl's `endpoint status` shows. */
#include <stdlib.h>

#include "ballast.h"

static void maintenance_status(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__StatusRequest *r = ballast_unpack(call, &etcdserverpb__status_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);

    raft_node_status st;
    raft_node_get_status(b->node, &st);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    Etcdserverpb__StatusResponse resp = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    resp.header = &h;
    resp.version = (char *)BALLAST_ETCD_VERSION;
    mvcc_db_size(b->store, &resp.dbsize, &resp.dbsizeinuse);
    resp.leader = st.leader_id;
    resp.raftindex = st.commit_index;
    resp.raftterm = st.term;
    resp.raftappliedindex = st.applied_index;
    char *errors[1];
    if (st.leader_id == 0) {
        errors[0] = (char *)"etcdserver: no leader";
        resp.errors = errors;
        resp.n_errors = 1;
    }
    resp.islearner = st.is_learner;
    ballast_reply_packed(call, &resp.base);
}

size_t maintenance_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.Maintenance/Status", maintenance_status, b, 2};
    return 1;
}
