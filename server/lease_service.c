/* The Lease service. Until leases are implemented (a later milestone), no
 * lease can exist, so LeaseLeases truthfully answers with an empty list and
 * puts with a lease get etcd's "requested lease not found" from storage. */
#include "ballast.h"

static void lease_leases(rpc_call *call, const uint8_t *data, size_t len, void *arg)
{
    ballast_server *b = arg;
    Etcdserverpb__LeaseLeasesRequest *r = etcdserverpb__lease_leases_request__unpack(NULL, len, data);
    if (!r) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, BALLAST_ERR_MALFORMED);
        return;
    }
    etcdserverpb__lease_leases_request__free_unpacked(r, NULL);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    ballast_fill_header(b, &h);
    Etcdserverpb__LeaseLeasesResponse resp = ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
    resp.header = &h;
    ballast_reply_packed(call, &resp.base);
}

size_t lease_service_methods(ballast_server *b, rpc_method *out)
{
    out[0] = (rpc_method){"/etcdserverpb.Lease/LeaseLeases", lease_leases, b, 2};
    return 1;
}
