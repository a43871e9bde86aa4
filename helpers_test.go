package storage_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"
	"go.uber.org/goleak"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// host is the test value most tests store: a StoredValue, so read values are
// reflect.DeepEqual to hand-built ones.
type host struct {
	storage.StoredValue
	Name string `json:"name"`
	Port int    `json:"port"`
}

// record embeds RevisionedValue: the ABA-safe variant.
type record struct {
	storage.RevisionedValue
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// newClient starts a single-member etcd for t and returns a client to it.
func newClient(t testing.TB, opts ...storagetest.Option) *clientv3.Client {
	t.Helper()
	return storagetest.New(t, opts...)
}

// testContext returns a context that ends with the test or after three
// minutes: a bound for a hung test, never reached by a slow one.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newCluster starts a multi-member cluster of etcd's integration framework.
// It is the only place that does: the goroutine-leak check is registered
// before the cluster, so it runs after Terminate (cleanups run last-in,
// first-out), and the framework's own leak detection, which skips a test
// silently when a goroutine predates it, is off. Call it once per top-level
// test, never from a parallel test.
func newCluster(t *testing.T, cfg *integration.ClusterConfig) *integration.Cluster {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	integration.BeforeTest(t, integration.WithoutGoLeakDetection())
	clus := integration.NewCluster(t, cfg)
	t.Cleanup(func() { clus.Terminate(t) })
	return clus
}

// verifyNoLeaks checks, when the test ends, that no goroutine started during
// it is left (register it before starting etcd: cleanups run in reverse).
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func put(t testing.TB, client *clientv3.Client, key, val string) int64 {
	t.Helper()
	resp, err := client.Put(testContext(t), key, val)
	require.NoError(t, err)
	return resp.Header.Revision
}

// hostWithVersion is a hand-built host as a read from etcd should return it.
func hostWithVersion(name string, port int, version int64) *host {
	h := &host{Name: name, Port: port}
	h.SetVersion(version)
	return h
}

// quietWindow is how long a test watches for something that must not happen
// (an event or error after the watch stopped). Absence can only be asserted
// over a window; nothing else waits on a clock.
const quietWindow = 300 * time.Millisecond

// waitTimeout bounds every wait for something the library must do. It is
// long because a loaded CI runner under -race is slow; a passing test never
// waits it out. (Stopping a member that serves a watch stream alone takes
// 2 s: the framework's gRPC GracefulStop waits that long for open streams.)
const waitTimeout = 30 * time.Second

// pollInterval is how often a test polls for a condition it waits on.
const pollInterval = 5 * time.Millisecond

// requireNoMoreErrors checks that no second error follows on errc.
func requireNoMoreErrors(t *testing.T, errc <-chan error) {
	t.Helper()
	require.Never(t, func() bool { return len(errc) > 0 }, 200*time.Millisecond, 10*time.Millisecond, "a second error on Error()")
}

// nextError returns the next error on errc, failing the test if none comes
// within waitTimeout or if it is nil.
func nextError(t *testing.T, errc <-chan error, msgAndArgs ...any) error {
	t.Helper()
	err := recvError(t, errc)
	require.Error(t, err, msgAndArgs...)
	return err
}

// recvError returns the next value on errc (an error from Error(), or
// what a Watch run in a goroutine returned), failing the test if none comes
// in waitTimeout.
func recvError(t *testing.T, errc <-chan error) error {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case err := <-errc:
		return err
	case <-timer.C:
		t.Fatalf("no error on the watch's error channel within %v", waitTimeout)
		return nil
	}
}

// waitSignal waits for c to be closed, failing the test after waitTimeout.
func waitSignal(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: not within %v", what, waitTimeout)
	}
}

// recorder keeps a copy of each event a handler received, for the test
// goroutine to read.
type recorder[V storage.Value] struct {
	mu     sync.Mutex // protects events
	events []storage.Event[V]
}

func (r *recorder[V]) handle(e *storage.Event[V]) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, *e)
	return nil
}

func (r *recorder[V]) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// all returns a copy of the events received so far.
func (r *recorder[V]) all() []storage.Event[V] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// snapshot returns the events received so far, as pointers to copies.
func (r *recorder[V]) snapshot() []*storage.Event[V] {
	all := r.all()
	events := make([]*storage.Event[V], len(all))
	for i := range all {
		events[i] = &all[i]
	}
	return events
}

// has reports whether an event for key was received.
func (r *recorder[V]) has(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.events, func(e storage.Event[V]) bool { return e.Key == key })
}

// lastRev is the revision of the last event received, 0 before any.
func (r *recorder[V]) lastRev() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return 0
	}
	return r.events[len(r.events)-1].Revision
}

// waitFor waits until the recorder holds at least n events.
func (r *recorder[V]) waitFor(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return r.len() >= n }, waitTimeout, 10*time.Millisecond,
		"the handler should receive %d events", n)
}

// retryWrite runs op until it succeeds or ctx ends, each attempt bounded to a
// second: through a healthy member a write fails only while a new leader is
// elected (the stopped or partitioned member may have been the leader).
func retryWrite(ctx context.Context, op func(ctx context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err := op(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select { // back off between attempts; this synchronises nothing
		case <-ctx.Done():
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
}
