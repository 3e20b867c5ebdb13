"""Watch streams that require a leader (clientv3.WithRequireLeader, which
Kubernetes uses for its watches) end when their member loses the leader.

On a 3-member cluster, a follower gets two Watch streams on key "w": one with
gRPC metadata hasleader=true, one without.  Both see a Put.  The two other
members are then SIGSTOPped:
  - the hasleader stream ends with UNAVAILABLE "etcdserver: no leader" within
    END_BOUND (etcd ends such streams after 3 election timeouts without a
    leader);
  - the plain stream stays open;
  - a new hasleader Watch on that member is refused at once with the same
    error once it reports no leader.
After SIGCONT the plain stream still gets the next Put.
"""

import queue
import threading
import time

import grpc

import harness
from harness import check, rpc_pb2, rpc_pb2_grpc

REQUIRE_LEADER = (("hasleader", "true"),)
END_BOUND = 15.0


class WatchStream(threading.Thread):
    """A Watch stream on key "w", its events in `events`, its end in `ended`."""

    def __init__(self, member, metadata=None):
        super().__init__(daemon=True)
        self.channel = member.new_channel()
        self.metadata = metadata
        self.requests = queue.Queue()
        self.events = queue.Queue()
        self.ended = None                 # (code, details, monotonic time)
        self.requests.put(rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"w")))

    def _requests(self):
        while True:
            item = self.requests.get()
            if item is None:
                return
            yield item

    def run(self):
        stub = rpc_pb2_grpc.WatchStub(self.channel)
        try:
            for resp in stub.Watch(self._requests(), metadata=self.metadata, timeout=120):
                for ev in resp.events:
                    self.events.put(ev.kv.value)
        except grpc.RpcError as exc:
            self.ended = (exc.code(), exc.details(), time.monotonic())

    def close(self):
        self.requests.put(None)
        self.channel.close()


def main():
    with harness.Cluster(3) as cluster:
        member = cluster.followers()[0]
        streams = [WatchStream(member, REQUIRE_LEADER), WatchStream(member)]
        for s in streams:
            s.start()
        time.sleep(0.5)
        cluster.leader().kv().Put(rpc_pb2.PutRequest(key=b"w", value=b"1"), timeout=10)
        for s in streams:
            check(s.events.get(timeout=10) == b"1", "a watch on %s missed the first Put" % member.name)
        for other in cluster.members:
            if other is not member:
                other.sigstop()
        stopped = time.monotonic()
        try:
            required, plain = streams
            required.join(END_BOUND)
            check(required.ended is not None, "the hasleader Watch on %s was still open %.0fs "
                  "after the others were stopped" % (member.name, END_BOUND))
            check(required.ended[:2] == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
                  "the hasleader Watch ended with %s %r" % required.ended[:2])
            harness.log("hasleader Watch ended %.1fs after the stop: %s %r"
                        % (required.ended[2] - stopped, required.ended[0], required.ended[1]))
            check(plain.ended is None, "the plain Watch ended too: %s" % (plain.ended,))
            fresh = WatchStream(member, REQUIRE_LEADER)
            started = time.monotonic()
            fresh.start()
            fresh.join(5)
            check(fresh.ended is not None and fresh.ended[:2] ==
                  (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
                  "a new hasleader Watch without a leader: %s" % (fresh.ended,))
            harness.log("a new hasleader Watch refused in %.2fs" % (fresh.ended[2] - started))
            fresh.close()
        finally:
            for other in cluster.members:
                other.sigcont()
        cluster.wait_ready()
        cluster.leader().kv().Put(rpc_pb2.PutRequest(key=b"w", value=b"2"), timeout=10)
        check(plain.events.get(timeout=10) == b"2", "the plain Watch missed the Put after recovery")
        harness.log("the plain Watch stayed open and got the Put after recovery")
        for s in streams:
            s.close()


if __name__ == "__main__":
    harness.run(main)
