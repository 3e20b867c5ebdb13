#!/usr/bin/python3
"""Compares sorted Range results of two empty servers (a reference etcd 3.4.23
and a Ballast) on data full of ties, with more than 12 rows, where Go's
unstable sort.Sort decides the order of equal elements. Not run by ctest:
it needs both servers running.

    etcd_sort_check.py REF_HOST:PORT CANDIDATE_HOST:PORT [SEED] [ROUNDS]

Exit status 0 when every result matched.
"""
import random
import sys

import grpc
from etcd3.etcdrpc import rpc_pb2 as pb
from etcd3.etcdrpc import rpc_pb2_grpc as rpc

PATTERNS = ['random', 'asc', 'desc', 'const', 'fewswaps', 'saw', 'organ']


def values(rnd, pattern, n):
    v = list(range(n))
    if pattern == 'random':
        return [rnd.randrange(3) for _ in range(n)]
    if pattern == 'desc':
        v.reverse()
    elif pattern == 'const':
        v = [5] * n
    elif pattern == 'fewswaps':
        for _ in range(rnd.randint(1, 4)):
            i, j = rnd.randrange(n), rnd.randrange(n)
            v[i], v[j] = v[j], v[i]
    elif pattern == 'saw':
        v = [i % 7 for i in range(n)]
    elif pattern == 'organ':
        v = [min(i, n - i) for i in range(n)]
    return v


def main():
    ref = rpc.KVStub(grpc.insecure_channel(sys.argv[1]))
    cand = rpc.KVStub(grpc.insecure_channel(sys.argv[2]))
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    rnd = random.Random(seed)
    bad = total = 0
    for r in range(rounds):
        prefix = b'sort%d-%d/' % (seed, r)
        n = rnd.choice([13, 20, 30, 49, 50, 51, 64, 100, 150, 260])
        pattern = rnd.choice(PATTERNS)
        vals = values(rnd, pattern, n)
        i = 0
        while i < n:  # txns of a few puts: equal mod revisions
            c = rnd.randint(1, 8)
            req = pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=prefix + b'k%04d' % k,
                                                       value=b'%06d' % vals[k]))
                for k in range(i, min(n, i + c))])
            ref.Txn(req)
            cand.Txn(req)
            i += c
        for _ in range(rnd.randint(0, n)):  # versions
            req = pb.PutRequest(key=prefix + b'k%04d' % rnd.randrange(n), value=b'x')
            ref.Put(req)
            cand.Put(req)
        for target in range(5):
            for order in range(3):
                for limit in (0, 7):
                    q = pb.RangeRequest(key=prefix, range_end=prefix[:-1] + b'0',
                                        sort_order=order, sort_target=target, limit=limit)
                    a = [kv.key for kv in ref.Range(q).kvs]
                    b = [kv.key for kv in cand.Range(q).kvs]
                    total += 1
                    if a != b:
                        bad += 1
                        print('MISMATCH n=%d pattern=%s target=%d order=%d limit=%d'
                              % (n, pattern, target, order, limit))
    print('%d/%d sorted ranges differ' % (bad, total))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
