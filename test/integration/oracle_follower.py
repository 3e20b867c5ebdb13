"""etcd-oracle with one more normalisation, for a candidate that is a cluster follower.

Usage: oracle_follower.py PATH-OF-etcd-oracle ARGS...  (as etcd-oracle ARGS...)

etcd 3.4 sorts LeaseLeases by expiry time (lease/lessor.go Leases()), but a
member that is not the leader keeps every lease's expiry at "forever"
(Demote(), and Grant() on a non-primary lessor): all ties, so a follower
lists its leases in Go map iteration order, which is random.  Two etcd
followers disagree with each other, so the oracle cannot compare that order
against a follower.  This wrapper loads the oracle unchanged and sorts the
`leases` of a LeaseLeasesResponse by ID on both sides before comparing; the
set of leases is still compared exactly.  (Used by test_oracle_cluster.py
through oracle_common.run_seed(cluster_size > 1).)
"""

import importlib.machinery
import importlib.util
import sys


def load_oracle(path):
    loader = importlib.machinery.SourceFileLoader("etcd_oracle", path)
    spec = importlib.util.spec_from_loader("etcd_oracle", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main():
    oracle = load_oracle(sys.argv[1])
    normalise = oracle.normalise_msg

    def normalise_msg(msg, lease_map):
        out = normalise(msg, lease_map)
        if out.DESCRIPTOR.full_name == "etcdserverpb.LeaseLeasesResponse":
            leases = []
            for lease in out.leases:
                leases.append(type(lease)())
                leases[-1].CopyFrom(lease)
            leases.sort(key=lambda lease: lease.ID)
            del out.leases[:]
            out.leases.extend(leases)
        return out

    oracle.normalise_msg = normalise_msg
    sys.exit(oracle.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
