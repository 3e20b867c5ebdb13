/* The Cluster service: MemberList, which etcdctl's `member list` shows. */
#include <stdlib.h>

#include "ballast.h"

static char **url_texts(const config_url_list *l)
{
    char **v = calloc(l->n ? l->n : 1, sizeof *v);
    for (size_t i = 0; v && i < l->n; i++)
        v[i] = l->items[i].text;
    return v;
}

static void cluster_member_list(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__MemberListRequest *r = ballast_unpack(call, &etcdserverpb__member_list_request__descriptor, data, len);
    if (!r)
        return;
    protobuf_c_message_free_unpacked(&r->base, NULL);

    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    mvcc_header mh = ballast_header(b);
    /* etcd's Cluster service headers carry no revision. */
    h.cluster_id = mh.cluster_id;
    h.member_id = mh.member_id;
    h.raft_term = mh.raft_term;

    Etcdserverpb__Member me = ETCDSERVERPB__MEMBER__INIT;
    me.id = b->member_id;
    me.name = b->cfg->name;
    me.peerurls = url_texts(&b->cfg->initial_advertise_peer_urls);
    me.n_peerurls = b->cfg->initial_advertise_peer_urls.n;
    me.clienturls = url_texts(&b->cfg->advertise_client_urls);
    me.n_clienturls = b->cfg->advertise_client_urls.n;
    Etcdserverpb__Member *members[1] = {&me};

    Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    resp.header = &h;
    resp.members = members;
    resp.n_members = 1;
    ballast_reply_packed(call, &resp.base);
    free(me.peerurls);
    free(me.clienturls);
}

size_t cluster_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.Cluster/MemberList", cluster_member_list, b, 2};
    return 1;
}
