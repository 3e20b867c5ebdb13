// Command k8s-clientv3 talks to an etcd v3 server the way the Kubernetes
// apiserver's etcd3 storage layer does (k8s.io/apiserver/pkg/storage/etcd3:
// store.go, watcher.go, compact.go, lease_manager.go), through the official
// Go client go.etcd.io/etcd/clientv3 of etcd 3.4, and checks every answer.
//
// Each check is a named step in a group (kv, lease, watch, compact) that prints
// one line "PASS group/step (time): details" or "FAIL group/step (time): why".
// The exit status is 1 if any step failed, 2 on bad usage or no connection.
// Every wait is bounded by the step's context (-step-timeout), and all steps
// together by -timeout.
//
// Build offline from Debian 12 packages (golang-go, golang-etcd-server-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= \
//	GOCACHE=<a writable dir> go build -o k8s-clientv3 .
//
// test/integration/test_k8s_clientv3.py builds it and runs it against etcd
// 3.4.23 and Ballast.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"go.etcd.io/etcd/mvcc/mvccpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

var (
	endpointsFlag = flag.String("endpoints", "127.0.0.1:2379", "comma-separated client endpoints")
	groupsFlag    = flag.String("groups", "kv,lease,watch,compact", "comma-separated groups to run (compact runs last: it compacts the whole keyspace)")
	stepTimeout   = flag.Duration("step-timeout", 10*time.Second, "bound of each step")
	totalTimeout  = flag.Duration("timeout", 60*time.Second, "bound of all steps together")
	namespaceFlag = flag.String("namespace", "", "namespace part of every key (default: one of its own per run)")
	expiryBound   = flag.Duration("expiry-bound", 8*time.Second, "a 2 s lease's key must be gone within this")
	referenceFlag = flag.Bool("reference", false, "the server is the reference etcd 3.4: a lease expiry later than "+
		"-expiry-bound is reported in the step's details, not failed (its lessor looks at a lease it has handed "+
		"out for revoke again only 3 s later); the step then waits up to "+lateExpiryWait.String())
)

// lateExpiryWait bounds the wait for a reference's late lease expiry.
const lateExpiryWait = 20 * time.Second

// compactRevKey is the key Kubernetes' compactor coordinates apiservers with.
const compactRevKey = "compact_rev_key"

type suite struct {
	deadline context.Context  // every step's context derives from it (-timeout)
	cli      *clientv3.Client // "this apiserver"
	cli2     *clientv3.Client // a second connection: another apiserver, a concurrent writer
	ns       string
	// what stepCompact did, for stepCompactWatch (compactAt == 0: nothing)
	compacted struct {
		prefix, key      string
		rev1, rev2, rev3 int64
		compactAt        int64
	}
	passed int
	failed []string
}

func main() {
	flag.Parse()
	groups := map[string]bool{}
	for _, g := range strings.Split(*groupsFlag, ",") {
		switch g = strings.TrimSpace(g); g {
		case "kv", "lease", "watch", "compact":
			groups[g] = true
		case "":
		default:
			fmt.Fprintf(os.Stderr, "unknown group %q (kv, lease, watch, compact)\n", g)
			os.Exit(2)
		}
	}
	ns := *namespaceFlag
	if ns == "" {
		ns = "k8s-clientv3-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	endpoints := strings.Split(*endpointsFlag, ",")
	cli, err := newClient(endpoints)
	if err != nil {
		fmt.Printf("FAIL setup/connect: %v\n", err)
		os.Exit(2)
	}
	defer cli.Close()
	cli2, err := newClient(endpoints)
	if err != nil {
		fmt.Printf("FAIL setup/connect (second client): %v\n", err)
		os.Exit(2)
	}
	defer cli2.Close()

	deadline, cancel := context.WithTimeout(context.Background(), *totalTimeout)
	defer cancel()
	s := &suite{deadline: deadline, cli: cli, cli2: cli2, ns: ns}
	fmt.Printf("k8s-clientv3: endpoints %s, keys under /registry/<resource>/%s/\n", *endpointsFlag, ns)
	if groups["kv"] {
		s.run("kv", "create-if-absent", s.stepCreateIfAbsent)
		s.run("kv", "guaranteed-update-conflict", s.stepGuaranteedUpdateConflict)
		s.run("kv", "guaranteed-update-concurrent", s.stepGuaranteedUpdateConcurrent)
		s.run("kv", "conditional-delete", s.stepConditionalDelete)
		s.run("kv", "paginated-list", s.stepPaginatedList)
		s.run("kv", "count-only", s.stepCountOnly)
	}
	if groups["lease"] {
		s.run("lease", "grant-put-with-lease-ttl", s.stepLeaseAttach)
		expiryTimeout := *stepTimeout
		if *referenceFlag && expiryTimeout < lateExpiryWait+2*time.Second {
			expiryTimeout = lateExpiryWait + 2*time.Second
		}
		s.runFor("lease", "lease-expiry-deletes-event", expiryTimeout, s.stepLeaseExpiry)
		s.run("lease", "put-with-unknown-lease", s.stepLeaseNotFound)
	}
	if groups["watch"] {
		s.run("watch", "from-revision-prefix-prevkv", s.stepWatchFromRevision)
		s.run("watch", "request-progress", s.stepWatchProgress)
		s.run("watch", "cancel-by-context", s.stepWatchCancel)
	}
	if groups["compact"] {
		s.run("compact", "compactor-then-get-list-compact-errcompacted", s.stepCompact)
		s.run("compact", "watch-from-compacted-revision", s.stepCompactWatch)
	}
	// (not "N passed, N failed": that line would read as a test runner's summary)
	total := s.passed + len(s.failed)
	if len(s.failed) > 0 {
		fmt.Printf("result: %d of %d steps failed: %s\n", len(s.failed), total, strings.Join(s.failed, ", "))
		os.Exit(1)
	}
	fmt.Printf("result: all %d steps passed\n", total)
}

// newClient dials like the apiserver (k8s.io/apiserver/pkg/storage/storagebackend/
// factory/etcd3.go): a blocking dial with a timeout and keepalives.
func newClient(endpoints []string) (*clientv3.Client, error) {
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	logCfg.Encoding = "console"
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          10 * time.Second,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		DialOptions:          []grpc.DialOption{grpc.WithBlock()},
		LogConfig:            &logCfg,
	})
}

func (s *suite) run(group, name string, fn func(ctx context.Context) (string, error)) {
	s.runFor(group, name, *stepTimeout, fn)
}

// runFor is run with a step bound of its own.
func (s *suite) runFor(group, name string, timeout time.Duration, fn func(ctx context.Context) (string, error)) {
	ctx, cancel := context.WithTimeout(s.deadline, timeout)
	defer cancel()
	start := time.Now()
	var details string
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
			}
		}()
		details, err = fn(ctx)
	}()
	took := time.Since(start).Round(time.Millisecond)
	id := group + "/" + name
	if err != nil {
		if s.deadline.Err() != nil {
			err = fmt.Errorf("%v (the deadline of all steps, %s, has passed)", err, *totalTimeout)
		} else if ctx.Err() != nil {
			err = fmt.Errorf("%v (step deadline %s reached)", err, timeout)
		}
		s.failed = append(s.failed, id)
		fmt.Printf("FAIL %s (%s): %v\n", id, took, err)
		return
	}
	s.passed++
	fmt.Printf("PASS %s (%s): %s\n", id, took, details)
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

func (s *suite) prefix(resource string) string    { return "/registry/" + resource + "/" + s.ns + "/" }
func (s *suite) key(resource, name string) string { return s.prefix(resource) + name }

// object is an opaque value like the apiserver's: the protobuf envelope magic
// "k8s\x00" followed by bytes that are not UTF-8 and hold NULs.
func object(kind, name string, generation int) string {
	return fmt.Sprintf("k8s\x00\n\x02v1\x12%c%s\x1a\xff\xfe\x00%s\x00gen=%d", len(kind), kind, name, generation)
}

func generationOf(value []byte) (int, error) {
	i := bytes.LastIndex(value, []byte("\x00gen="))
	if i < 0 || !bytes.HasPrefix(value, []byte("k8s\x00")) {
		return 0, fmt.Errorf("value %q is not an object this test wrote", value)
	}
	return strconv.Atoi(string(value[i+5:]))
}

// notFound is store.go's precondition of a create.
func notFound(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", 0)
}

func modRevisionIs(key string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", rev)
}

// create is store.go's Create: put only if the key does not exist.
func create(ctx context.Context, cli *clientv3.Client, key, value string, opts ...clientv3.OpOption) (*clientv3.TxnResponse, error) {
	return cli.Txn(ctx).If(notFound(key)).Then(clientv3.OpPut(key, value, opts...)).Else(clientv3.OpGet(key)).Commit()
}

func mustPut(ctx context.Context, cli *clientv3.Client, key, value string, opts ...clientv3.OpOption) (int64, error) {
	resp, err := cli.Put(ctx, key, value, opts...)
	if err != nil {
		return 0, fmt.Errorf("Put(%q): %v", key, err)
	}
	return resp.Header.Revision, nil
}

func kvString(kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "<nil>"
	}
	return fmt.Sprintf("{key %q value %q create %d mod %d version %d lease %d}",
		kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease)
}

// expectKV compares the fields the apiserver relies on.
func expectKV(what string, kv *mvccpb.KeyValue, key, value string, create, mod, version int64) error {
	if kv == nil {
		return fmt.Errorf("%s: no key-value, expected key %q", what, key)
	}
	if string(kv.Key) != key || string(kv.Value) != value || kv.CreateRevision != create ||
		kv.ModRevision != mod || kv.Version != version {
		return fmt.Errorf("%s: got %s, expected {key %q value %q create %d mod %d version %d}",
			what, kvString(kv), key, value, create, mod, version)
	}
	return nil
}

func getOne(ctx context.Context, cli *clientv3.Client, key string, opts ...clientv3.OpOption) (*mvccpb.KeyValue, *clientv3.GetResponse, error) {
	resp, err := cli.Get(ctx, key, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("Get(%q): %v", key, err)
	}
	switch len(resp.Kvs) {
	case 0:
		return nil, resp, nil
	case 1:
		return resp.Kvs[0], resp, nil
	}
	return nil, resp, fmt.Errorf("Get(%q) returned %d key-values", key, len(resp.Kvs))
}

// ---------------------------------------------------------------------------
// kv
// ---------------------------------------------------------------------------

func (s *suite) stepCreateIfAbsent(ctx context.Context) (string, error) {
	key := s.key("configmaps", "created-once")
	v1, v2 := object("ConfigMap", "created-once", 1), object("ConfigMap", "created-once", 2)

	resp, err := create(ctx, s.cli, key, v1)
	if err != nil {
		return "", fmt.Errorf("first create txn: %v", err)
	}
	if !resp.Succeeded || len(resp.Responses) != 1 || resp.Responses[0].GetResponsePut() == nil {
		return "", fmt.Errorf("first create txn: succeeded=%v responses=%v, expected success with one put response", resp.Succeeded, resp.Responses)
	}
	rev := resp.Header.Revision
	kv, _, err := getOne(ctx, s.cli, key)
	if err != nil {
		return "", err
	}
	if err := expectKV("Get after create", kv, key, v1, rev, rev, 1); err != nil {
		return "", err
	}

	resp, err = create(ctx, s.cli2, key, v2)
	if err != nil {
		return "", fmt.Errorf("second create txn: %v", err)
	}
	if resp.Succeeded {
		return "", fmt.Errorf("second create txn succeeded on an existing key (header revision %d)", resp.Header.Revision)
	}
	if len(resp.Responses) != 1 || resp.Responses[0].GetResponseRange() == nil {
		return "", fmt.Errorf("second create txn: responses %v, expected one range response (the Else OpGet)", resp.Responses)
	}
	rr := resp.Responses[0].GetResponseRange()
	if len(rr.Kvs) != 1 {
		return "", fmt.Errorf("second create txn: Else OpGet returned %d kvs, expected the existing object", len(rr.Kvs))
	}
	if err := expectKV("Else OpGet of the failed create", rr.Kvs[0], key, v1, rev, rev, 1); err != nil {
		return "", err
	}
	if resp.Header.Revision != rev {
		return "", fmt.Errorf("failed create txn moved the revision: header %d, expected %d", resp.Header.Revision, rev)
	}
	kv, _, err = getOne(ctx, s.cli, key)
	if err != nil {
		return "", err
	}
	if err := expectKV("Get after the failed create", kv, key, v1, rev, rev, 1); err != nil {
		return "", err
	}
	return fmt.Sprintf("created at revision %d; second create failed and returned the existing object", rev), nil
}

type objState struct {
	data []byte
	rev  int64 // mod revision, 0 if absent
}

func stateFrom(kvs []*mvccpb.KeyValue) objState {
	if len(kvs) == 0 {
		return objState{}
	}
	return objState{data: kvs[0].Value, rev: kvs[0].ModRevision}
}

// guaranteedUpdate is store.go's GuaranteedUpdate loop: read, transform,
// Txn(If(mod_revision == read)).Then(OpPut).Else(OpGet), retry from the Else
// read on conflict. beforeTxn (may be nil) runs before each attempt's txn.
// Returns the number of attempts and the revision of the successful write.
func guaranteedUpdate(ctx context.Context, cli *clientv3.Client, key string,
	tryUpdate func(cur objState) (string, error), beforeTxn func(attempt int, cur objState) error,
	onConflict func(attempt int, got objState) error) (int, int64, error) {
	getResp, err := cli.Get(ctx, key)
	if err != nil {
		return 0, 0, fmt.Errorf("Get(%q): %v", key, err)
	}
	orig := stateFrom(getResp.Kvs)
	for attempt := 1; attempt <= 50; attempt++ {
		newData, err := tryUpdate(orig)
		if err != nil {
			return attempt, 0, err
		}
		if beforeTxn != nil {
			if err := beforeTxn(attempt, orig); err != nil {
				return attempt, 0, err
			}
		}
		txnResp, err := cli.Txn(ctx).If(modRevisionIs(key, orig.rev)).
			Then(clientv3.OpPut(key, newData)).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return attempt, 0, fmt.Errorf("update txn attempt %d: %v", attempt, err)
		}
		if len(txnResp.Responses) != 1 {
			return attempt, 0, fmt.Errorf("update txn attempt %d: %d responses, expected 1", attempt, len(txnResp.Responses))
		}
		if !txnResp.Succeeded {
			rr := txnResp.Responses[0].GetResponseRange()
			if rr == nil {
				return attempt, 0, fmt.Errorf("failed update txn attempt %d: no range response from the Else OpGet", attempt)
			}
			orig = stateFrom(rr.Kvs)
			if onConflict != nil {
				if err := onConflict(attempt, orig); err != nil {
					return attempt, 0, err
				}
			}
			continue
		}
		if txnResp.Responses[0].GetResponsePut() == nil {
			return attempt, 0, fmt.Errorf("update txn attempt %d succeeded without a put response", attempt)
		}
		return attempt, txnResp.Header.Revision, nil
	}
	return 50, 0, fmt.Errorf("no successful update of %q in 50 attempts", key)
}

func (s *suite) stepGuaranteedUpdateConflict(ctx context.Context) (string, error) {
	key := s.key("pods", "updated")
	createResp, err := create(ctx, s.cli, key, object("Pod", "updated", 0))
	if err != nil || !createResp.Succeeded {
		return "", fmt.Errorf("create: err=%v resp=%v", err, createResp)
	}
	createRev := createResp.Header.Revision
	var writerRev int64
	increment := func(cur objState) (string, error) {
		g, err := generationOf(cur.data)
		if err != nil {
			return "", err
		}
		return object("Pod", "updated", g+1), nil
	}
	// Another apiserver writes between our read and our txn on the first attempt.
	concurrentWriter := func(attempt int, cur objState) error {
		if attempt != 1 {
			return nil
		}
		g, err := generationOf(cur.data)
		if err != nil {
			return err
		}
		writerRev, err = mustPut(ctx, s.cli2, key, object("Pod", "updated", g+100))
		return err
	}
	var conflictSeen objState
	onConflict := func(attempt int, got objState) error {
		if attempt == 1 {
			conflictSeen = got
		}
		return nil
	}
	attempts, rev, err := guaranteedUpdate(ctx, s.cli, key, increment, concurrentWriter, onConflict)
	if err != nil {
		return "", err
	}
	if attempts != 2 {
		return "", fmt.Errorf("update took %d attempts, expected 2 (first one must conflict with the concurrent writer)", attempts)
	}
	if conflictSeen.rev != writerRev || string(conflictSeen.data) != object("Pod", "updated", 100) {
		return "", fmt.Errorf("the failed txn's Else OpGet returned mod %d value %q, expected the concurrent write: mod %d value %q",
			conflictSeen.rev, conflictSeen.data, writerRev, object("Pod", "updated", 100))
	}
	if rev != writerRev+1 {
		return "", fmt.Errorf("successful update at revision %d, expected %d", rev, writerRev+1)
	}
	kv, _, err := getOne(ctx, s.cli, key)
	if err != nil {
		return "", err
	}
	if err := expectKV("Get after the update", kv, key, object("Pod", "updated", 101), createRev, rev, 3); err != nil {
		return "", err
	}
	return fmt.Sprintf("attempt 1 conflicted with the write at revision %d, attempt 2 wrote revision %d", writerRev, rev), nil
}

func (s *suite) stepGuaranteedUpdateConcurrent(ctx context.Context) (string, error) {
	const workers, perWorker = 4, 8
	key := s.key("leases", "counter")
	createResp, err := create(ctx, s.cli, key, object("Lease", "counter", 0))
	if err != nil || !createResp.Succeeded {
		return "", fmt.Errorf("create: err=%v resp=%v", err, createResp)
	}
	increment := func(cur objState) (string, error) {
		g, err := generationOf(cur.data)
		if err != nil {
			return "", err
		}
		return object("Lease", "counter", g+1), nil
	}
	var mu sync.Mutex
	var errs []string
	attemptsTotal := 0
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		cli := s.cli
		if w%2 == 1 {
			cli = s.cli2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				attempts, _, err := guaranteedUpdate(ctx, cli, key, increment, nil, nil)
				mu.Lock()
				attemptsTotal += attempts
				if err != nil {
					errs = append(errs, err.Error())
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return "", fmt.Errorf("%d worker(s) failed: %s", len(errs), strings.Join(errs, "; "))
	}
	kv, _, err := getOne(ctx, s.cli, key)
	if err != nil {
		return "", err
	}
	if kv == nil {
		return "", fmt.Errorf("counter %q vanished", key)
	}
	g, err := generationOf(kv.Value)
	if err != nil {
		return "", err
	}
	if g != workers*perWorker || kv.Version != workers*perWorker+1 {
		return "", fmt.Errorf("after %d increments the counter is %d with version %d, expected %d and %d (lost update)",
			workers*perWorker, g, kv.Version, workers*perWorker, workers*perWorker+1)
	}
	return fmt.Sprintf("%d workers x %d increments on two connections: counter %d, %d conflicts retried",
		workers, perWorker, g, attemptsTotal-workers*perWorker), nil
}

// conditionalDelete is store.go's delete with a precondition on the revision.
func conditionalDelete(ctx context.Context, cli *clientv3.Client, key string, rev int64) (*clientv3.TxnResponse, error) {
	return cli.Txn(ctx).If(modRevisionIs(key, rev)).
		Then(clientv3.OpDelete(key, clientv3.WithPrevKV())).Else(clientv3.OpGet(key)).Commit()
}

func (s *suite) stepConditionalDelete(ctx context.Context) (string, error) {
	key := s.key("secrets", "deleted")
	v1, v2 := object("Secret", "deleted", 1), object("Secret", "deleted", 2)
	rev1, err := mustPut(ctx, s.cli, key, v1)
	if err != nil {
		return "", err
	}
	rev2, err := mustPut(ctx, s.cli, key, v2)
	if err != nil {
		return "", err
	}

	resp, err := conditionalDelete(ctx, s.cli, key, rev1)
	if err != nil {
		return "", fmt.Errorf("delete with stale revision: %v", err)
	}
	if resp.Succeeded {
		return "", fmt.Errorf("delete with stale revision %d succeeded (current %d)", rev1, rev2)
	}
	if len(resp.Responses) != 1 || resp.Responses[0].GetResponseRange() == nil || len(resp.Responses[0].GetResponseRange().Kvs) != 1 {
		return "", fmt.Errorf("failed delete: responses %v, expected the Else OpGet with the current object", resp.Responses)
	}
	if err := expectKV("Else OpGet of the failed delete", resp.Responses[0].GetResponseRange().Kvs[0], key, v2, rev1, rev2, 2); err != nil {
		return "", err
	}
	if resp.Header.Revision != rev2 {
		return "", fmt.Errorf("failed delete txn: header revision %d, expected %d", resp.Header.Revision, rev2)
	}

	resp, err = conditionalDelete(ctx, s.cli, key, rev2)
	if err != nil {
		return "", fmt.Errorf("delete with current revision: %v", err)
	}
	if !resp.Succeeded || len(resp.Responses) != 1 || resp.Responses[0].GetResponseDeleteRange() == nil {
		return "", fmt.Errorf("delete with current revision %d: succeeded=%v responses=%v", rev2, resp.Succeeded, resp.Responses)
	}
	dr := resp.Responses[0].GetResponseDeleteRange()
	if dr.Deleted != 1 || len(dr.PrevKvs) != 1 {
		return "", fmt.Errorf("delete response: deleted=%d prev_kvs=%d, expected 1 and 1", dr.Deleted, len(dr.PrevKvs))
	}
	if err := expectKV("delete's prev_kv", dr.PrevKvs[0], key, v2, rev1, rev2, 2); err != nil {
		return "", err
	}
	delRev := resp.Header.Revision
	if delRev != rev2+1 {
		return "", fmt.Errorf("delete txn: header revision %d, expected %d", delRev, rev2+1)
	}
	kv, _, err := getOne(ctx, s.cli, key)
	if err != nil {
		return "", err
	}
	if kv != nil {
		return "", fmt.Errorf("key still there after the delete: %s", kvString(kv))
	}

	resp, err = conditionalDelete(ctx, s.cli, key, rev2)
	if err != nil {
		return "", fmt.Errorf("delete of a deleted key: %v", err)
	}
	if resp.Succeeded || len(resp.Responses) != 1 || resp.Responses[0].GetResponseRange() == nil ||
		len(resp.Responses[0].GetResponseRange().Kvs) != 0 {
		return "", fmt.Errorf("delete of a deleted key: succeeded=%v responses=%v, expected failure and an empty Else OpGet",
			resp.Succeeded, resp.Responses)
	}
	return fmt.Sprintf("stale precondition refused with the current object; delete at revision %d returned prev_kv", delRev), nil
}

type listedKV struct {
	key, value string
	mod        int64
}

func (l listedKV) String() string { return fmt.Sprintf("%q=%q@%d", l.key, l.value, l.mod) }

func listed(kvs []*mvccpb.KeyValue) []listedKV {
	out := make([]listedKV, len(kvs))
	for i, kv := range kvs {
		out[i] = listedKV{string(kv.Key), string(kv.Value), kv.ModRevision}
	}
	return out
}

func sameList(a, b []listedKV) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (s *suite) stepPaginatedList(ctx context.Context) (string, error) {
	const total, limit = 25, 7
	prefix := s.prefix("pods")
	prefix = prefix[:len(prefix)-1] + "-list/" // its own prefix: /registry/pods/<ns>-list/
	rangeEnd := clientv3.GetPrefixRangeEnd(prefix)
	var expected []listedKV
	for i := 0; i < total; i++ {
		name := fmt.Sprintf("pod-%03d", i)
		value := object("Pod", name, 1)
		rev, err := mustPut(ctx, s.cli, prefix+name, value)
		if err != nil {
			return "", err
		}
		expected = append(expected, listedKV{prefix + name, value, rev})
	}
	// neighbours that a prefix range must not return
	if _, err := mustPut(ctx, s.cli, prefix[:len(prefix)-1], "outside"); err != nil {
		return "", err
	}
	if _, err := mustPut(ctx, s.cli, rangeEnd, "outside (the range end itself)"); err != nil {
		return "", err
	}

	// Writes made while the client pages: ahead of, behind and inside the pages.
	betweenPages := []func() error{
		func() error { _, err := mustPut(ctx, s.cli2, prefix+"pod-000a", "created between pages"); return err },
		func() error { _, err := mustPut(ctx, s.cli2, prefix+"pod-020", "updated between pages"); return err },
		func() error { _, err := s.cli2.Delete(ctx, prefix+"pod-015"); return err },
		func() error { _, err := mustPut(ctx, s.cli2, prefix+"pod-999", "created between pages"); return err },
		func() error { _, err := mustPut(ctx, s.cli2, prefix+"pod-", "created between pages"); return err },
	}

	var got []listedKV
	var pinned int64 // 0 on the first page: the current revision, as the apiserver does
	key := prefix
	pages := 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(rangeEnd), clientv3.WithLimit(limit)}
		if pinned != 0 {
			opts = append(opts, clientv3.WithRev(pinned))
		}
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			return "", fmt.Errorf("page %d (from %q at revision %d): %v", pages+1, key, pinned, err)
		}
		pages++
		if pinned == 0 {
			pinned = resp.Header.Revision
		}
		remaining := int64(total - len(got))
		wantLen := remaining
		if wantLen > limit {
			wantLen = limit
		}
		if int64(len(resp.Kvs)) != wantLen || resp.Count != remaining || resp.More != (remaining > limit) {
			return "", fmt.Errorf("page %d from %q at revision %d: %d kvs, count %d, more %v; expected %d kvs, count %d, more %v",
				pages, key, pinned, len(resp.Kvs), resp.Count, resp.More, wantLen, remaining, remaining > limit)
		}
		got = append(got, listed(resp.Kvs)...)
		if !resp.More {
			break
		}
		if pages > total {
			return "", fmt.Errorf("more than %d pages", total)
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		for _, write := range betweenPages {
			if err := write(); err != nil {
				return "", fmt.Errorf("write between pages: %v", err)
			}
		}
		betweenPages = betweenPages[:0]
	}
	if !sameList(got, expected) {
		return "", fmt.Errorf("pages at revision %d differ from what was written:\n got      %v\n expected %v", pinned, got, expected)
	}
	full, err := s.cli.Get(ctx, prefix, clientv3.WithRange(rangeEnd), clientv3.WithRev(pinned))
	if err != nil {
		return "", fmt.Errorf("unpaginated list at revision %d: %v", pinned, err)
	}
	if !sameList(listed(full.Kvs), got) || full.More || full.Count != total {
		return "", fmt.Errorf("unpaginated list at revision %d (count %d, more %v) differs from the pages:\n list  %v\n pages %v",
			pinned, full.Count, full.More, listed(full.Kvs), got)
	}
	now, err := s.cli.Get(ctx, prefix, clientv3.WithRange(rangeEnd), clientv3.WithKeysOnly())
	if err != nil {
		return "", fmt.Errorf("current list: %v", err)
	}
	if len(now.Kvs) != total+2 || now.Count != total+2 {
		return "", fmt.Errorf("current list has %d keys (count %d), expected %d after the writes between pages", len(now.Kvs), now.Count, total+2)
	}
	return fmt.Sprintf("%d pages of %d at revision %d equal the full list of %d while 5 writes happened between pages",
		pages, limit, pinned, total), nil
}

func (s *suite) stepCountOnly(ctx context.Context) (string, error) {
	const n = 13
	prefix := s.prefix("events")
	for i := 0; i < n; i++ {
		if _, err := mustPut(ctx, s.cli, fmt.Sprintf("%sevent-%02d", prefix, i), object("Event", "e", i)); err != nil {
			return "", err
		}
	}
	if _, err := mustPut(ctx, s.cli, clientv3.GetPrefixRangeEnd(prefix), "outside"); err != nil {
		return "", err
	}
	count := func(opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
		opts = append([]clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithCountOnly()}, opts...)
		return s.cli.Get(ctx, prefix, opts...)
	}
	resp, err := count()
	if err != nil {
		return "", fmt.Errorf("count: %v", err)
	}
	if resp.Count != n || len(resp.Kvs) != 0 || resp.More {
		return "", fmt.Errorf("count-only: count %d, %d kvs, more %v; expected %d, 0, false", resp.Count, len(resp.Kvs), resp.More, n)
	}
	rev := resp.Header.Revision
	if _, err := s.cli.Delete(ctx, prefix+"event-03"); err != nil {
		return "", fmt.Errorf("delete: %v", err)
	}
	resp, err = count()
	if err != nil {
		return "", fmt.Errorf("count after delete: %v", err)
	}
	if resp.Count != n-1 || len(resp.Kvs) != 0 {
		return "", fmt.Errorf("count after a delete: %d (%d kvs), expected %d", resp.Count, len(resp.Kvs), n-1)
	}
	resp, err = count(clientv3.WithRev(rev))
	if err != nil {
		return "", fmt.Errorf("count at revision %d: %v", rev, err)
	}
	if resp.Count != n || len(resp.Kvs) != 0 {
		return "", fmt.Errorf("count at revision %d: %d (%d kvs), expected %d", rev, resp.Count, len(resp.Kvs), n)
	}
	return fmt.Sprintf("count %d, %d after a delete, %d at revision %d; no kvs returned", n, n-1, n, rev), nil
}

// ---------------------------------------------------------------------------
// lease (the apiserver gives events a TTL through a lease)
// ---------------------------------------------------------------------------

func (s *suite) stepLeaseAttach(ctx context.Context) (string, error) {
	const ttl = 3600 // the apiserver's default --event-ttl is one hour
	grant, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return "", fmt.Errorf("Grant(%d): %v", ttl, err)
	}
	if grant.ID == 0 || grant.TTL != ttl {
		return "", fmt.Errorf("Grant(%d): id %d ttl %d", ttl, grant.ID, grant.TTL)
	}
	// The apiserver's lease manager reuses one lease for many events.
	keys := []string{s.key("events", "with-lease-a"), s.key("events", "with-lease-b")}
	for i, key := range keys {
		resp, err := create(ctx, s.cli, key, object("Event", key, i), clientv3.WithLease(grant.ID))
		if err != nil {
			return "", fmt.Errorf("create %q with lease %x: %v", key, grant.ID, err)
		}
		if !resp.Succeeded {
			return "", fmt.Errorf("create %q with lease: txn did not succeed", key)
		}
		kv, _, err := getOne(ctx, s.cli, key)
		if err != nil {
			return "", err
		}
		if kv == nil || kv.Lease != int64(grant.ID) {
			return "", fmt.Errorf("Get(%q) after a put with lease %d: %s", key, grant.ID, kvString(kv))
		}
	}
	ttlResp, err := s.cli.TimeToLive(ctx, grant.ID, clientv3.WithAttachedKeys())
	if err != nil {
		return "", fmt.Errorf("TimeToLive(%x): %v", grant.ID, err)
	}
	var attached []string
	for _, k := range ttlResp.Keys {
		attached = append(attached, string(k))
	}
	sort.Strings(attached)
	if ttlResp.ID != grant.ID || ttlResp.GrantedTTL != ttl || ttlResp.TTL <= ttl-30 || ttlResp.TTL > ttl ||
		strings.Join(attached, "|") != strings.Join(keys, "|") {
		return "", fmt.Errorf("TimeToLive: id %x granted %d ttl %d keys %q; expected id %x granted %d ttl in (%d, %d] keys %q",
			ttlResp.ID, ttlResp.GrantedTTL, ttlResp.TTL, attached, grant.ID, ttl, ttl-30, ttl, keys)
	}
	liveTTL := ttlResp.TTL
	if _, err := s.cli.Revoke(ctx, grant.ID); err != nil {
		return "", fmt.Errorf("Revoke(%x): %v", grant.ID, err)
	}
	for _, key := range keys {
		kv, _, err := getOne(ctx, s.cli, key)
		if err != nil {
			return "", err
		}
		if kv != nil {
			return "", fmt.Errorf("%q still there after its lease was revoked: %s", key, kvString(kv))
		}
	}
	ttlResp, err = s.cli.TimeToLive(ctx, grant.ID)
	if err != nil {
		return "", fmt.Errorf("TimeToLive of a revoked lease: %v", err)
	}
	if ttlResp.TTL != -1 {
		return "", fmt.Errorf("TimeToLive of a revoked lease: ttl %d, expected -1", ttlResp.TTL)
	}
	return fmt.Sprintf("lease %x ttl %d holds 2 events (TimeToLive ttl %d, keys listed); revoke deleted them",
		grant.ID, ttl, liveTTL), nil
}

func (s *suite) stepLeaseExpiry(ctx context.Context) (string, error) {
	grant, err := s.cli.Grant(ctx, 2)
	if err != nil {
		return "", fmt.Errorf("Grant(2): %v", err)
	}
	key := s.key("events", "expiring")
	resp, err := create(ctx, s.cli, key, object("Event", "expiring", 1), clientv3.WithLease(grant.ID))
	if err != nil || !resp.Succeeded {
		return "", fmt.Errorf("create with lease %x: err=%v resp=%v", grant.ID, err, resp)
	}
	start := time.Now()
	wait := *expiryBound
	if *referenceFlag && wait < lateExpiryWait {
		wait = lateExpiryWait
	}
	for {
		kv, _, err := getOne(ctx, s.cli, key)
		if err != nil {
			return "", err
		}
		if kv == nil {
			break
		}
		if time.Since(start) > wait {
			return "", fmt.Errorf("%q with a lease of ttl %d still there after %s", key, grant.TTL, time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	took := time.Since(start)
	if took < 500*time.Millisecond {
		return "", fmt.Errorf("%q with a lease of ttl %d disappeared after only %s", key, grant.TTL, took)
	}
	ttlResp, err := s.cli.TimeToLive(ctx, grant.ID)
	if err != nil {
		return "", fmt.Errorf("TimeToLive of an expired lease: %v", err)
	}
	if ttlResp.TTL != -1 {
		return "", fmt.Errorf("TimeToLive of an expired lease: ttl %d, expected -1", ttlResp.TTL)
	}
	late := ""
	if took > *expiryBound {
		late = fmt.Sprintf(" (LATE: over the %s bound; not counted, the server is the reference)", *expiryBound)
	}
	return fmt.Sprintf("event with a lease of ttl %d deleted after %s%s", grant.TTL, took.Round(100*time.Millisecond), late), nil
}

func (s *suite) stepLeaseNotFound(ctx context.Context) (string, error) {
	key := s.key("events", "unknown-lease")
	const bogus = clientv3.LeaseID(0x7eadbeef12345)
	_, err := create(ctx, s.cli, key, object("Event", "unknown-lease", 1), clientv3.WithLease(bogus))
	if err != rpctypes.ErrLeaseNotFound {
		return "", fmt.Errorf("create with an unknown lease: error %v, expected %v", err, rpctypes.ErrLeaseNotFound)
	}
	kv, _, err := getOne(ctx, s.cli, key)
	if err != nil {
		return "", err
	}
	if kv != nil {
		return "", fmt.Errorf("the refused create left %s", kvString(kv))
	}
	return fmt.Sprintf("error %q, nothing written", rpctypes.ErrLeaseNotFound), nil
}

// ---------------------------------------------------------------------------
// watch (watcher.go: WithRev(rv+1), WithPrevKV, WithPrefix, WithProgressNotify,
// on a context made with WithRequireLeader)
// ---------------------------------------------------------------------------

type wantEvent struct {
	typ     mvccpb.Event_EventType
	key     string
	value   string // PUT only
	mod     int64
	create  int64 // PUT only
	version int64 // PUT only
	prev    string
	prevMod int64 // 0: no prev_kv expected
}

func (w wantEvent) String() string {
	return fmt.Sprintf("%s %q value %q mod %d create %d version %d prev %q@%d", w.typ, w.key, w.value, w.mod, w.create, w.version, w.prev, w.prevMod)
}

func eventString(ev *clientv3.Event) string {
	return fmt.Sprintf("%s kv %s prev_kv %s", ev.Type, kvString(ev.Kv), kvString(ev.PrevKv))
}

func matchEvent(ev *clientv3.Event, w wantEvent) error {
	bad := ev.Type != w.typ || ev.Kv == nil || string(ev.Kv.Key) != w.key || ev.Kv.ModRevision != w.mod
	if !bad && w.typ == mvccpb.PUT {
		bad = string(ev.Kv.Value) != w.value || ev.Kv.CreateRevision != w.create || ev.Kv.Version != w.version
	}
	if !bad {
		if w.prevMod == 0 {
			bad = ev.PrevKv != nil
		} else {
			bad = ev.PrevKv == nil || string(ev.PrevKv.Key) != w.key || string(ev.PrevKv.Value) != w.prev || ev.PrevKv.ModRevision != w.prevMod
		}
	}
	if bad {
		return fmt.Errorf("got event %s, expected %s", eventString(ev), w)
	}
	return nil
}

// collectEvents reads watch responses until n events arrived.
func collectEvents(ctx context.Context, wch clientv3.WatchChan, n int, what string) ([]*clientv3.Event, error) {
	var events []*clientv3.Event
	for len(events) < n {
		select {
		case <-ctx.Done():
			return events, fmt.Errorf("%s: %d of %d events before the deadline: %v", what, len(events), n, eventsString(events))
		case resp, ok := <-wch:
			if !ok {
				return events, fmt.Errorf("%s: watch channel closed after %d of %d events", what, len(events), n)
			}
			if err := resp.Err(); err != nil {
				return events, fmt.Errorf("%s: watch error after %d of %d events: %v", what, len(events), n, err)
			}
			events = append(events, resp.Events...)
		}
	}
	return events, nil
}

func eventsString(events []*clientv3.Event) string {
	var parts []string
	for _, ev := range events {
		parts = append(parts, eventString(ev))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// expectQuiet fails if a watch delivers anything within d.
func expectQuiet(wch clientv3.WatchChan, d time.Duration, what string) error {
	select {
	case resp, ok := <-wch:
		if !ok {
			return fmt.Errorf("%s: watch channel closed", what)
		}
		return fmt.Errorf("%s: unexpected watch response: events %v, progress %v, err %v", what, eventsString(resp.Events), resp.IsProgressNotify(), resp.Err())
	case <-time.After(d):
		return nil
	}
}

// waitProgress waits for a progress notification and returns its revision.
func waitProgress(ctx context.Context, wch clientv3.WatchChan, what string) (int64, error) {
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s: no progress notification before the deadline", what)
		case resp, ok := <-wch:
			if !ok {
				return 0, fmt.Errorf("%s: watch channel closed while waiting for a progress notification", what)
			}
			if err := resp.Err(); err != nil {
				return 0, fmt.Errorf("%s: watch error while waiting for a progress notification: %v", what, err)
			}
			if resp.IsProgressNotify() {
				return resp.Header.Revision, nil
			}
			return 0, fmt.Errorf("%s: expected a progress notification, got events %v", what, eventsString(resp.Events))
		}
	}
}

func (s *suite) stepWatchFromRevision(ctx context.Context) (string, error) {
	prefix := s.prefix("deployments")
	a, b, c := prefix+"a", prefix+"b", prefix+"c"
	outside := prefix[:len(prefix)-1] // "/registry/deployments/<ns>": sorts before the prefix
	outside2 := clientv3.GetPrefixRangeEnd(prefix)

	rev0, err := mustPut(ctx, s.cli, a, object("Deployment", "a", 1)) // the list the watch starts after
	if err != nil {
		return "", err
	}
	// history: written before the watch starts, replayed from rev0+1
	revA2, err := mustPut(ctx, s.cli, a, object("Deployment", "a", 2))
	if err != nil {
		return "", err
	}
	revB1, err := mustPut(ctx, s.cli, b, object("Deployment", "b", 1))
	if err != nil {
		return "", err
	}
	if _, err := mustPut(ctx, s.cli, outside, "outside"); err != nil {
		return "", err
	}

	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	prefixCh := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev0+1),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	// the apiserver multiplexes many watches on one stream: a single-key one too
	keyCh := s.cli.Watch(wctx, b, clientv3.WithRev(rev0+1), clientv3.WithPrevKV(), clientv3.WithProgressNotify())

	// live: written while the watch runs
	delResp, err := s.cli2.Txn(ctx).If(modRevisionIs(a, revA2)).Then(clientv3.OpDelete(a, clientv3.WithPrevKV())).Commit()
	if err != nil || !delResp.Succeeded {
		return "", fmt.Errorf("conditional delete of %q: err=%v resp=%v", a, err, delResp)
	}
	revDelA := delResp.Header.Revision
	revB2, err := mustPut(ctx, s.cli2, b, object("Deployment", "b", 2))
	if err != nil {
		return "", err
	}
	cResp, err := create(ctx, s.cli2, c, object("Deployment", "c", 1))
	if err != nil || !cResp.Succeeded {
		return "", fmt.Errorf("create %q: err=%v resp=%v", c, err, cResp)
	}
	revC1 := cResp.Header.Revision
	lastRev, err := mustPut(ctx, s.cli2, outside2, "outside")
	if err != nil {
		return "", err
	}

	wantPrefix := []wantEvent{
		{mvccpb.PUT, a, object("Deployment", "a", 2), revA2, rev0, 2, object("Deployment", "a", 1), rev0},
		{mvccpb.PUT, b, object("Deployment", "b", 1), revB1, revB1, 1, "", 0},
		{mvccpb.DELETE, a, "", revDelA, 0, 0, object("Deployment", "a", 2), revA2},
		{mvccpb.PUT, b, object("Deployment", "b", 2), revB2, revB1, 2, object("Deployment", "b", 1), revB1},
		{mvccpb.PUT, c, object("Deployment", "c", 1), revC1, revC1, 1, "", 0},
	}
	wantKey := []wantEvent{wantPrefix[1], wantPrefix[3]}
	for _, w := range []struct {
		ch   clientv3.WatchChan
		want []wantEvent
		what string
	}{{prefixCh, wantPrefix, "prefix watch"}, {keyCh, wantKey, "single-key watch"}} {
		events, err := collectEvents(ctx, w.ch, len(w.want), w.what)
		if err != nil {
			return "", err
		}
		if len(events) != len(w.want) {
			return "", fmt.Errorf("%s: %d events, expected %d: %v", w.what, len(events), len(w.want), eventsString(events))
		}
		for i := range events {
			if err := matchEvent(events[i], w.want[i]); err != nil {
				return "", fmt.Errorf("%s event %d: %v", w.what, i+1, err)
			}
		}
	}
	for _, w := range []struct {
		ch   clientv3.WatchChan
		what string
	}{{prefixCh, "prefix watch"}, {keyCh, "single-key watch"}} {
		if err := expectQuiet(w.ch, 300*time.Millisecond, w.what+" after its events (keys outside the range were written)"); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("prefix watch from revision %d: %d events (2 replayed, 3 live, prev_kv right); key watch: %d events; nothing else up to revision %d",
		rev0+1, len(wantPrefix), len(wantKey), lastRev), nil
}

func (s *suite) stepWatchProgress(ctx context.Context) (string, error) {
	prefix := s.prefix("nodes")
	rev0, err := mustPut(ctx, s.cli, prefix+"n1", object("Node", "n1", 1))
	if err != nil {
		return "", err
	}
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	prefixCh := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev0+1),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	// an idle watch on the same stream; its created notification says it is
	// registered, so that the progress broadcast must reach it
	otherCh := s.cli.Watch(wctx, s.key("nodes-other", "x"), clientv3.WithRev(rev0+1), clientv3.WithPrevKV(),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	select {
	case <-ctx.Done():
		return "", fmt.Errorf("idle watch: no created notification")
	case resp, ok := <-otherCh:
		if !ok || !resp.Created || resp.Err() != nil {
			return "", fmt.Errorf("idle watch: expected the created notification, got ok=%v created=%v err=%v", ok, resp.Created, resp.Err())
		}
	}

	rev1, err := mustPut(ctx, s.cli2, prefix+"n1", object("Node", "n1", 2))
	if err != nil {
		return "", err
	}
	events, err := collectEvents(ctx, prefixCh, 1, "prefix watch")
	if err != nil {
		return "", err
	}
	if err := matchEvent(events[0], wantEvent{mvccpb.PUT, prefix + "n1", object("Node", "n1", 2), rev1, rev0, 2, object("Node", "n1", 1), rev0}); err != nil {
		return "", err
	}
	// a write no watch here selects: progress must still report it
	lastRev, err := mustPut(ctx, s.cli2, s.key("nodes-unwatched", "y"), "unwatched")
	if err != nil {
		return "", err
	}

	// store.go's RequestWatchProgress: same metadata as the watches' context
	if err := s.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
		return "", fmt.Errorf("RequestProgress: %v", err)
	}
	revs := map[string]int64{}
	for _, w := range []struct {
		ch   clientv3.WatchChan
		what string
	}{{prefixCh, "prefix watch"}, {otherCh, "idle watch on the same stream"}} {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		rev, err := waitProgress(pctx, w.ch, w.what)
		pcancel()
		if err != nil {
			return "", err
		}
		if rev < lastRev {
			return "", fmt.Errorf("%s: progress notification at revision %d, expected >= %d (the last write)", w.what, rev, lastRev)
		}
		revs[w.what] = rev
	}
	return fmt.Sprintf("RequestProgress answered on both watches of the stream at revision %d/%d (last write %d)",
		revs["prefix watch"], revs["idle watch on the same stream"], lastRev), nil
}

func (s *suite) stepWatchCancel(ctx context.Context) (string, error) {
	key := s.key("services", "watched")
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.cli.Watch(wctx, key, clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	select {
	case resp, ok := <-wch:
		if !ok || !resp.Created {
			wcancel()
			return "", fmt.Errorf("expected the created notification, got ok=%v created=%v err=%v", ok, resp.Created, resp.Err())
		}
	case <-ctx.Done():
		wcancel()
		return "", fmt.Errorf("no created notification")
	}
	rev, err := mustPut(ctx, s.cli2, key, object("Service", "watched", 1))
	if err != nil {
		wcancel()
		return "", err
	}
	events, err := collectEvents(ctx, wch, 1, "watch")
	if err != nil {
		wcancel()
		return "", err
	}
	if err := matchEvent(events[0], wantEvent{mvccpb.PUT, key, object("Service", "watched", 1), rev, rev, 1, "", 0}); err != nil {
		wcancel()
		return "", err
	}
	wcancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-wch:
			if !ok {
				// the stream must still serve a new watch after the cancel
				w2ctx, w2cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
				defer w2cancel()
				w2 := s.cli.Watch(w2ctx, key, clientv3.WithRev(rev), clientv3.WithPrevKV())
				if _, err := collectEvents(ctx, w2, 1, "new watch after a cancel"); err != nil {
					return "", err
				}
				return "watch channel closed after its context was cancelled; a new watch on the stream works", nil
			}
		case <-deadline:
			return "", fmt.Errorf("watch channel not closed 5s after its context was cancelled")
		}
	}
}

// ---------------------------------------------------------------------------
// compact (compact.go's compactor, then what a client at an old revision sees)
// ---------------------------------------------------------------------------

// compact is compact.go's compact(): t is the compact_rev_key version this
// apiserver last saw, rev the revision to compact (0: only record).
func compact(ctx context.Context, cli *clientv3.Client, t, rev int64) (int64, int64, bool, error) {
	resp, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.Version(compactRevKey), "=", t),
	).Then(
		clientv3.OpPut(compactRevKey, strconv.FormatInt(rev, 10)),
	).Else(
		clientv3.OpGet(compactRevKey),
	).Commit()
	if err != nil {
		return t, rev, false, fmt.Errorf("compactor txn: %v", err)
	}
	curRev := resp.Header.Revision
	if !resp.Succeeded {
		rr := resp.Responses[0].GetResponseRange()
		if rr == nil || len(rr.Kvs) != 1 {
			return t, rev, false, fmt.Errorf("failed compactor txn: Else OpGet returned %v", resp.Responses)
		}
		return rr.Kvs[0].Version, curRev, false, nil
	}
	if rev == 0 {
		return t + 1, curRev, true, nil
	}
	if _, err := cli.Compact(ctx, rev); err != nil {
		return t + 1, curRev, true, fmt.Errorf("Compact(%d): %v", rev, err)
	}
	return t + 1, curRev, true, nil
}

func (s *suite) stepCompact(ctx context.Context) (string, error) {
	prefix := s.prefix("replicasets")
	key := prefix + "rs"
	rev1, err := mustPut(ctx, s.cli, key, object("ReplicaSet", "rs", 1))
	if err != nil {
		return "", err
	}
	rev2, err := mustPut(ctx, s.cli, key, object("ReplicaSet", "rs", 2))
	if err != nil {
		return "", err
	}
	// first interval: record the revision to compact next time
	t, compactAt, ok, err := compact(ctx, s.cli, 0, 0)
	if err != nil {
		return "", err
	}
	if !ok || t != 1 {
		return "", fmt.Errorf("first compactor txn: succeeded=%v version %d, expected success and version 1 (a fresh server)", ok, t)
	}
	rev3, err := mustPut(ctx, s.cli, key, object("ReplicaSet", "rs", 3))
	if err != nil {
		return "", err
	}
	// next interval: compact at what was recorded
	t, _, ok, err = compact(ctx, s.cli, t, compactAt)
	if err != nil {
		return "", err
	}
	if !ok || t != 2 {
		return "", fmt.Errorf("second compactor txn: succeeded=%v version %d, expected success and version 2", ok, t)
	}
	// compacted: the watch step can run whatever fails below
	s.compacted.prefix, s.compacted.key = prefix, key
	s.compacted.rev1, s.compacted.rev2, s.compacted.rev3, s.compacted.compactAt = rev1, rev2, rev3, compactAt
	// another apiserver with a stale view of compact_rev_key backs off
	t2, _, ok, err := compact(ctx, s.cli2, 1, rev3)
	if err != nil {
		return "", err
	}
	if ok || t2 != 2 {
		return "", fmt.Errorf("stale compactor txn: succeeded=%v version %d, expected failure and version 2", ok, t2)
	}

	if _, err := s.cli.Get(ctx, key, clientv3.WithRev(rev1)); err != rpctypes.ErrCompacted {
		return "", fmt.Errorf("Get at compacted revision %d (compacted at %d): error %v, expected %v", rev1, compactAt, err, rpctypes.ErrCompacted)
	}
	if _, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithRev(rev2)); err != rpctypes.ErrCompacted {
		return "", fmt.Errorf("paginated list at compacted revision %d (compacted at %d): error %v, expected %v", rev2, compactAt, err, rpctypes.ErrCompacted)
	}
	kv, _, err := getOne(ctx, s.cli, key, clientv3.WithRev(compactAt))
	if err != nil {
		return "", fmt.Errorf("Get at the compaction revision %d: %v", compactAt, err)
	}
	if err := expectKV("Get at the compaction revision", kv, key, object("ReplicaSet", "rs", 2), rev1, rev2, 2); err != nil {
		return "", err
	}
	if _, err := s.cli.Compact(ctx, rev1); err != rpctypes.ErrCompacted {
		return "", fmt.Errorf("Compact(%d) below the compacted revision %d: error %v, expected %v", rev1, compactAt, err, rpctypes.ErrCompacted)
	}

	return fmt.Sprintf("compactor compacted at %d; Get/list/Compact below it -> %q; Get at %d works",
		compactAt, rpctypes.ErrCompacted, compactAt), nil
}

func (s *suite) stepCompactWatch(ctx context.Context) (string, error) {
	c := s.compacted
	if c.compactAt == 0 {
		return "", fmt.Errorf("not run: the compactor step did not compact")
	}
	prefix, key, rev1, rev2, rev3, compactAt := c.prefix, c.key, c.rev1, c.rev2, c.rev3, c.compactAt
	// watch from a compacted revision: one response with CompactRevision, then the channel closes
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	wch := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev1), clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	select {
	case <-ctx.Done():
		return "", fmt.Errorf("watch from compacted revision %d: no response before the deadline", rev1)
	case resp, ok := <-wch:
		if !ok {
			return "", fmt.Errorf("watch from compacted revision %d: channel closed without a response", rev1)
		}
		if resp.CompactRevision != compactAt || resp.Err() != rpctypes.ErrCompacted || len(resp.Events) != 0 {
			return "", fmt.Errorf("watch from compacted revision %d: compact_revision %d err %v events %v canceled %v; expected compact_revision %d and %v",
				rev1, resp.CompactRevision, resp.Err(), eventsString(resp.Events), resp.Canceled, compactAt, rpctypes.ErrCompacted)
		}
	}
	select {
	case <-ctx.Done():
		return "", fmt.Errorf("watch from compacted revision %d: channel not closed after the compacted response", rev1)
	case resp, ok := <-wch:
		if ok {
			return "", fmt.Errorf("watch from compacted revision %d: a second response after the compacted one: %v err %v", rev1, eventsString(resp.Events), resp.Err())
		}
	}

	// the compaction revision itself is still watchable, prev_kv included
	wch = s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(compactAt), clientv3.WithPrevKV())
	events, err := collectEvents(ctx, wch, 1, fmt.Sprintf("watch from the compaction revision %d", compactAt))
	if err != nil {
		return "", err
	}
	if err := matchEvent(events[0], wantEvent{mvccpb.PUT, key, object("ReplicaSet", "rs", 3), rev3, rev1, 3, object("ReplicaSet", "rs", 2), rev2}); err != nil {
		return "", fmt.Errorf("watch from the compaction revision %d: %v", compactAt, err)
	}
	return fmt.Sprintf("watch from %d -> compact_revision %d and %q, channel closed; watch from %d replays with prev_kv",
		rev1, compactAt, rpctypes.ErrCompacted, compactAt), nil
}
