package storage_test

// Subscriptions of a cache (Cache.Watch): what they deliver and when, how
// they fail and end, and that a cache keeps one etcd watch for all of them.
// The slow-subscriber and fault tests, which judge histories with
// internal/watchcheck, are in cache_watch_hooks_test.go.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcdkit/storage"
)

// watchCreates counts the watch create requests of the clients it is
// installed in: how many etcd watches they open, whatever gRPC streams
// carry them.
type watchCreates struct{ n atomic.Int64 }

func (w *watchCreates) dialOption() grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
		method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Watch/Watch" {
			return cs, err
		}
		return createCounter{ClientStream: cs, n: &w.n}, nil
	})
}

// createCounter counts the create requests sent on one watch stream.
type createCounter struct {
	grpc.ClientStream
	n *atomic.Int64
}

func (s createCounter) SendMsg(m any) error {
	if r, ok := m.(*pb.WatchRequest); ok && r.GetCreateRequest() != nil {
		s.n.Add(1)
	}
	return s.ClientStream.SendMsg(m)
}

// cacheHolds is a handler wrapper that checks, for every event, that the
// cache has applied it: its revision has reached the event's, and it
// answers a Get of the key. (cache_watch_hooks_test.go checks the mod
// revision a Get returns too.) It records what it found wrong in bad.
func cacheHolds(ctx context.Context, c storage.Cache[*host], bad *violationLog, h func(e *storage.Event[*host]) error) func(e *storage.Event[*host]) error {
	return func(e *storage.Event[*host]) error {
		if rev := c.Revision(); rev < e.Revision {
			bad.add("%s: the cache is at revision %d", describeEvent(e), rev)
		}
		// The Get of an undecodable value fails as the event did.
		if _, err := c.Get(e.Key).Exec(ctx); err != nil && !errors.Is(err, storage.ErrNotFound) && e.Type != storage.EventTypeError {
			bad.add("%s: cache Get: %v", describeEvent(e), err)
		}
		return h(e)
	}
}

func TestCacheWatchDeliversTheCachedItemsThenEachChangeOnceTheCacheHoldsIt(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	putNamed(t, client, "/cw/b", "cw/b")
	putNamed(t, client, "/cw/a", "cw/a")
	putNamed(t, client, "/cw/x/c", "cw/x/c")
	put(t, client, "/cw/bad", "{not json")
	putNamed(t, client, "/cwz", "cwz") // beside the prefix, never delivered
	c := startCache(ctx, t, client, "/cw", keyOfHost)
	var bad violationLog

	t.Log("phase 1: the initial puts, in key order, at the cache's revision")
	rev := c.Revision()
	all, sub := newEventQueue(), newEventQueue()
	allOp, subOp := c.Watch(""), c.Watch("/cw/x")
	t.Cleanup(allOp.Close)
	t.Cleanup(subOp.Close)
	require.NoError(t, allOp.Watch(ctx, cacheHolds(ctx, c, &bad, all.handle)))
	require.NoError(t, subOp.Watch(ctx, cacheHolds(ctx, c, &bad, sub.handle)))
	requireWatchEvents(t, []storage.Event[*host]{
		wantPut("/cw/a", "cw/a", 1, rev),
		wantPut("/cw/b", "cw/b", 1, rev),
		wantDecodeError("/cw/bad", rev),
		wantPut("/cw/x/c", "cw/x/c", 1, rev),
	}, all.take(t, 4))
	requireWatchEvents(t, []storage.Event[*host]{wantPut("/cw/x/c", "cw/x/c", 1, rev)}, sub.take(t, 1))

	t.Log("phase 2: every change after it, in revision order, each once; the prefix filters")
	r1 := putNamed(t, client, "/cw/a", "cw/a")
	r2 := deleteRev(t, client, "/cw/b")
	r3 := txnRev(t, client, clientv3.OpPut("/cw/x/d", hostNamedJSON("cw/x/d")), clientv3.OpPut("/cw/e", hostNamedJSON("cw/e")))
	r4 := put(t, client, "/cw/x/c", "{still not json")
	putNamed(t, client, "/cwz", "cwz")
	r5 := putNamed(t, client, "/cw/last", "cw/last")
	requireWatchEvents(t, []storage.Event[*host]{
		wantPut("/cw/a", "cw/a", 2, r1),
		wantDelete("/cw/b", r2),
		wantPut("/cw/x/d", "cw/x/d", 1, r3), // in the txn's order
		wantPut("/cw/e", "cw/e", 1, r3),
		wantDecodeError("/cw/x/c", r4),
		wantPut("/cw/last", "cw/last", 1, r5),
	}, all.take(t, 6))
	requireWatchEvents(t, []storage.Event[*host]{
		wantPut("/cw/x/d", "cw/x/d", 1, r3),
		wantDecodeError("/cw/x/c", r4),
	}, sub.take(t, 2))
	all.requireQuiet(t)
	sub.requireQuiet(t)
	bad.require(t)
	requireNotStopped(t, "subscription", allOp.Error())
}

func TestCacheWatchWritesThroughTheCacheAreEventsOnceItsWatchDeliversThem(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	c := startCache(ctx, t, client, "/cw", keyOfHost)
	rec := newEventQueue()
	op := c.Watch("")
	t.Cleanup(op.Close)
	var bad violationLog
	require.NoError(t, op.Watch(ctx, cacheHolds(ctx, c, &bad, rec.handle)))

	put := c.Put(&host{Name: "cw/a", Port: 1})
	require.NoError(t, put.Exec(ctx))
	del := c.DeleteByKey("/cw/a")
	_, err := del.Exec(ctx)
	require.NoError(t, err)
	got := rec.take(t, 2)
	want := wantPut("/cw/a", "cw/a", 1, put.Revision())
	want.Value.Port = 1
	requireWatchEvents(t, []storage.Event[*host]{want, wantDelete("/cw/a", del.Revision())}, got)
	rec.requireQuiet(t)
	bad.require(t)
}

func TestCacheWatchFailsOutsideThePrefixAndOnACacheThatCannotBeRead(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	c := storage.NewCache(client, "/cw", keyOfHost)
	t.Cleanup(c.Stop)

	t.Run("a cache not started", func(t *testing.T) {
		err := c.Watch("").Watch(ctx, ignoreEvent)
		require.ErrorContains(t, err, "cache not started")
		require.ErrorContains(t, err, "/cw/")
	})
	t.Run("a prefix outside the cache's", func(t *testing.T) {
		require.NoError(t, c.Start(ctx))
		defer c.Stop()
		for _, p := range []string{"/c", "/cwx", "/other"} {
			err := c.Watch(p).Watch(ctx, ignoreEvent)
			require.ErrorContains(t, err, "outside the cache's prefix /cw/", p)
		}
	})
	t.Run("a cache whose watch stopped", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		require.NoError(t, c.Start(cctx))
		defer c.Stop()
		cancel()
		require.ErrorIs(t, nextError(t, c.Error()), context.Canceled)
		require.ErrorIs(t, c.Watch("").Watch(ctx, ignoreEvent), context.Canceled)
	})
	t.Run("an error from the handler during the initial puts", func(t *testing.T) {
		putNamed(t, client, "/cw/a", "cw/a")
		require.NoError(t, c.Start(ctx))
		defer c.Stop()
		errBoom := errors.New("boom")
		op := c.Watch("")
		err := op.Watch(ctx, func(*storage.Event[*host]) error { return errBoom })
		require.ErrorIs(t, err, errBoom)
		require.Zero(t, storage.CacheSubscribers(c), "a failed Watch left its run on the cache")
		require.NoError(t, op.Watch(ctx, ignoreEvent), "nothing is running after a failed Watch")
		op.Close()
	})
}

func TestCacheWatchEndsWithTheCache(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	c := storage.NewCache(client, "/cw", keyOfHost)
	t.Cleanup(c.Stop)
	ops := []storage.WatchOp[*host]{c.Watch(""), c.Watch("/cw/x")}
	for _, op := range ops {
		t.Cleanup(op.Close)
	}
	watchAll := func() {
		t.Helper()
		for _, op := range ops {
			op.Close()
			require.NoError(t, op.Watch(ctx, ignoreEvent))
		}
		require.Equal(t, len(ops), storage.CacheSubscribers(c))
	}

	t.Log("phase 1: Stop ends every subscription with an error saying so")
	require.NoError(t, c.Start(ctx))
	watchAll()
	c.Stop()
	for _, op := range ops {
		require.ErrorContains(t, nextError(t, op.Error()), "cache /cw/: cache stopped")
		require.ErrorIs(t, op.Watch(ctx, ignoreEvent), storage.ErrWatchAlreadyInProgress, "a stopped run is in progress until Close")
		requireNoMoreErrors(t, op.Error())
	}
	require.Zero(t, storage.CacheSubscribers(c))

	t.Log("phase 2: a cache whose watch stopped ends them with its cause")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	require.NoError(t, c.Start(cctx))
	watchAll()
	cancel()
	for _, op := range ops {
		require.ErrorIs(t, nextError(t, op.Error()), context.Canceled)
	}
	require.ErrorIs(t, nextError(t, c.Error()), context.Canceled)
	c.Stop()

	t.Log("phase 3: a subscription's own context ends its run only")
	require.NoError(t, c.Start(ctx))
	watchAll()
	ops[0].Close()
	sctx, cancelSub := context.WithCancel(ctx)
	require.NoError(t, ops[0].Watch(sctx, ignoreEvent))
	cancelSub()
	require.ErrorIs(t, nextError(t, ops[0].Error()), context.Canceled)
	require.Eventually(t, func() bool { return storage.CacheSubscribers(c) == 1 }, waitTimeout, pollInterval)
	requireNotStopped(t, "cache", c.Error())
	requireNotStopped(t, "the other subscription", ops[1].Error())
}

func TestCacheWatchCloseFromInsideTheHandlerAndHandlerErrors(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	c := startCache(ctx, t, client, "/cw", keyOfHost)
	op := c.Watch("")
	t.Cleanup(op.Close)

	t.Log("phase 1: Close from inside handle returns at once; handle is not called again")
	calls := make(chan string, 16)
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*host]) error {
		calls <- e.Key
		if e.Key == "/cw/close" {
			op.Close()
		}
		return nil
	}))
	txnRev(t, client, clientv3.OpPut("/cw/close", hostNamedJSON("cw/close")), clientv3.OpPut("/cw/next", hostNamedJSON("cw/next")))
	require.Equal(t, "/cw/close", recvValue(t, calls))
	require.Eventually(t, func() bool { return storage.CacheSubscribers(c) == 0 }, waitTimeout, pollInterval)
	require.Empty(t, calls, "handle was called after Close from inside it")
	requireNoMoreErrors(t, op.Error())

	t.Log("phase 2: an error from handle stops the run with it on Error()")
	errBoom := errors.New("boom")
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*host]) error {
		if e.Key == "/cw/fail" {
			return errBoom
		}
		return nil
	}))
	putNamed(t, client, "/cw/fail", "cw/fail")
	err := nextError(t, op.Error())
	require.ErrorIs(t, err, errBoom)
	require.ErrorContains(t, err, "cache watch prefix /cw/")
	requireNotStopped(t, "cache", c.Error())
}

func TestCacheWatchKeepsOneEtcdWatchForEverySubscription(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	var creates watchCreates
	client := newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{creates.dialOption()}})
	c := startCache(ctx, t, client, "/cw", keyOfHost)
	require.Eventually(t, func() bool { return creates.n.Load() == 1 }, waitTimeout, pollInterval, "the cache's own watch")

	const subs = 20
	queues := make([]*eventQueue, subs)
	for i := range queues {
		op := c.Watch(fmt.Sprintf("/cw/%d", i%2))
		t.Cleanup(op.Close)
		queues[i] = newEventQueue()
		require.NoError(t, op.Watch(ctx, queues[i].handle))
	}
	for i := range 2 {
		putNamed(t, s.Client(), fmt.Sprintf("/cw/%d/k", i), "k")
	}
	for _, q := range queues {
		q.next(t)
	}
	// A Sync and a wait for a revision ask for progress on the same stream.
	require.NoError(t, c.Sync(ctx))
	require.NoError(t, c.WaitForRevision(ctx, currentRevision(t, s.Client())))
	require.EqualValues(t, 1, creates.n.Load(), "watch create requests with %d subscriptions", subs)
}

// TestCacheWatchResyncDeletesAKeyTheWatchDeletedBeforeAWriteThroughPrefixDelete:
// a subscriber whose queue was dropped missed the watch's delete of a key;
// a prefix delete through the cache, which the watch has not delivered yet,
// covers the same key. The resync must still delete the key: the prefix
// delete's own events will not, as the key was gone before it.
func TestCacheWatchResyncDeletesAKeyTheWatchDeletedBeforeAWriteThroughPrefixDelete(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	writer := s.Client()
	gate := newStreamGate()
	c := startCache(ctx, t, newGatedClient(t, s, gate), "/rs", keyOfHost)
	put(t, writer, "/rs/k", rawHostJSON("rs/k", 1))
	put(t, writer, "/rs/other", rawHostJSON("rs/other", 1))
	require.NoError(t, c.Sync(ctx))

	var (
		mu      sync.Mutex
		present = map[string]bool{} // the subscriber's view
	)
	blocked, release := make(chan struct{}), make(chan struct{})
	sub := c.Watch("")
	storage.SetMaxPending(sub, 1)
	require.NoError(t, sub.Watch(ctx, func(e *storage.Event[*host]) error {
		mu.Lock()
		present[e.Key] = e.Type == storage.EventTypePut
		mu.Unlock()
		if e.Key == "/rs/block" && e.Type == storage.EventTypePut {
			close(blocked)
			<-release
		}
		return nil
	}))
	t.Cleanup(sub.Close)

	t.Log("phase 1: block the handler; the watch deletes /rs/k and the queue overflows")
	put(t, writer, "/rs/block", rawHostJSON("rs/block", 1))
	waitSignal(t, blocked, "the handler got /rs/block")
	_, err := writer.Delete(ctx, "/rs/k")
	require.NoError(t, err)
	put(t, writer, "/rs/x1", rawHostJSON("rs/x1", 1))
	put(t, writer, "/rs/x2", rawHostJSON("rs/x2", 1))
	require.NoError(t, c.Sync(ctx))
	require.NotZero(t, storage.WatchRecovery(sub).Backlogs, "forcing failed: the queue did not overflow")

	t.Log("phase 2: hold the cache's watch; delete the prefix through the cache")
	gate.hold()
	_, err = c.DeletePrefix("/rs/").Exec(ctx)
	require.NoError(t, err)
	_, err = c.Get("/rs/other").Exec(ctx)
	require.ErrorIs(t, err, storage.ErrNotFound, "the cache applied its own delete")

	t.Log("phase 3: release the handler: it resyncs while the watch is held")
	close(release)
	require.Eventually(t, func() bool { return storage.WatchRecovery(sub).Relists > 0 }, waitTimeout, pollInterval)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !present["/rs/k"]
	}, waitTimeout, pollInterval, "the resync never deleted /rs/k")

	t.Log("phase 4: release the watch: the prefix delete's events end the rest")
	gate.release()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range present {
			if p {
				return false
			}
		}
		return true
	}, waitTimeout, pollInterval, "the subscriber still holds keys etcd deleted")
	requireNotStopped(t, "subscription", sub.Error())
}
