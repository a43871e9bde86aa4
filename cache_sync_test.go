package storage_test

// Tests of a cache's freshness: Revision, WaitForRevision, Sync and Verify.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/tests/v3/framework/integration"
	"google.golang.org/grpc"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
	"github.com/etcdkit/storage/storagetest"
)

// rpcCounter counts the requests a client sends: linearizable range reads,
// and progress requests on its watch streams. Its dial options install it.
type rpcCounter struct {
	// block, when set, holds every range read until it is closed.
	block    atomic.Pointer[chan struct{}]
	ranges   atomic.Int64
	progress atomic.Int64
}

func (rc *rpcCounter) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if r, ok := req.(*pb.RangeRequest); ok && !r.GetSerializable() {
				rc.ranges.Add(1)
				if block := rc.block.Load(); block != nil {
					select {
					case <-*block:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
			method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, err
			}
			return &countingStream{ClientStream: s, rc: rc}, nil
		}),
	}
}

type countingStream struct {
	grpc.ClientStream
	rc *rpcCounter
}

func (s *countingStream) SendMsg(m any) error {
	if wr, ok := m.(*pb.WatchRequest); ok && wr.GetProgressRequest() != nil {
		s.rc.progress.Add(1)
	}
	return s.ClientStream.SendMsg(m)
}

func TestCacheSyncReadsEveryWriteOfAnotherClientThroughAnotherMember(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3})
	ctx := testContext(t)
	// The cache watches through a follower, and the writes go through the
	// leader, so that cutting the follower off in phase 3 leaves a quorum
	// that keeps taking writes.
	leader := clus.WaitLeader(t)
	cut := (leader + 1) % 3
	writer, reader := clus.Client(leader), clus.Client(cut)
	c := startCache(ctx, t, reader, "/sync", keyOfHost)
	const writes = 300

	t.Log("phase 1: without Sync, count the reads that miss the write just made")
	stale := 0
	for i := range writes {
		name := fmt.Sprintf("sync/a%d", i%10)
		require.NoError(t, storage.NewPutOp(writer, storage.Key(name), &host{Name: name, Port: i}).Exec(ctx))
		if got, err := c.Get(storage.Key(name)).Exec(ctx); err != nil || got.Port != i {
			stale++
		}
	}
	t.Logf("without Sync, %d of %d reads through member %d missed the write through member %d", stale, writes, cut, leader)

	t.Log("phase 2: with Sync, every read returns the write")
	for i := range writes {
		name := fmt.Sprintf("sync/b%d", i%10)
		require.NoError(t, storage.NewPutOp(writer, storage.Key(name), &host{Name: name, Port: i}).Exec(ctx))
		require.NoError(t, c.Sync(ctx))
		got, err := c.Get(storage.Key(name)).Exec(ctx)
		require.NoError(t, err, "write %d", i)
		require.Equal(t, i, got.Port, "write %d: Sync returned before the cache held it", i)
	}

	t.Logf("phase 3: cut member %d off; the cache is stale and Sync refuses to say otherwise", cut)
	m := clus.Members[cut]
	others := []*integration.Member{clus.Members[leader], clus.Members[(leader+2)%3]}
	m.InjectPartition(t, others...)
	// The quorum keeps its leader, but a loaded machine may still time a
	// proposal out: the put is retried until it is acknowledged.
	require.Eventually(t, func() bool {
		return storage.NewPutOp(writer, "/sync/cut", &host{Name: "sync/cut", Port: 1}).Exec(ctx) == nil
	}, waitTimeout, pollInterval, "the quorum took no write")
	_, err := c.Get("/sync/cut").Exec(ctx)
	require.ErrorIs(t, err, storage.ErrNotFound, "forcing failed: the cut member applied a write")
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = c.Sync(short)
	cancel()
	require.Error(t, err, "Sync returned on a member that cannot reach a quorum")
	_, err = c.Get("/sync/cut").Exec(ctx)
	require.ErrorIs(t, err, storage.ErrNotFound)

	t.Log("phase 4: heal; Sync returns and the read sees the write")
	m.RecoverPartition(t, others...)
	require.NoError(t, c.Sync(ctx))
	got, err := c.Get("/sync/cut").Exec(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Port)
}

func TestCacheWaitForRevisionReadsYourWritesAcrossClients(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	writer := newExtraClient(t, s, clientv3.Config{})
	ctx := testContext(t)
	c := startCache(ctx, t, s.Client(), "/wait", keyOfHost)

	for i := range 50 {
		put := storage.NewPutOp(writer, "/wait/a", &host{Name: "wait/a", Port: i})
		require.NoError(t, put.Exec(ctx))
		require.NoError(t, c.WaitForRevision(ctx, put.Revision()))
		assert.GreaterOrEqual(t, c.Revision(), put.Revision())
		got, err := c.Get("/wait/a").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, i, got.Port, "round %d", i)
	}

	t.Run("a revision not reached ends with the context's error", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		err := c.WaitForRevision(short, c.Revision()+1000)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "wait for revision")
	})
}

func TestCacheWaitForRevisionFailsFastWithTheCause(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)

	t.Run("before Start", func(t *testing.T) {
		c := storage.NewCache(client, "/fast", keyOfHost)
		err := c.WaitForRevision(ctx, 1)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "cache not started")
		assert.NotErrorIs(t, err, context.DeadlineExceeded)
		assert.Zero(t, c.Revision())
		require.Error(t, c.Sync(ctx))
		require.Error(t, c.Verify(ctx))
	})

	t.Run("a waiter is woken by Stop", func(t *testing.T) {
		c := storage.NewCache(client, "/fast", keyOfHost)
		require.NoError(t, c.Start(ctx))
		assert.Positive(t, c.Revision())
		errc := make(chan error, 1)
		go func() { errc <- c.WaitForRevision(ctx, c.Revision()+1000) }()
		require.Eventually(t, func() bool { return storage.CacheWaiting(c) }, waitTimeout, pollInterval)
		c.Stop()
		err := <-errc
		require.Error(t, err)
		assert.Contains(t, err.Error(), "cache not started")
		assert.NotErrorIs(t, err, context.DeadlineExceeded)
		assert.Zero(t, c.Revision())
	})

	t.Run("a waiter is woken when the watch dies", func(t *testing.T) {
		watchCtx, stopWatch := context.WithCancel(ctx)
		c := startCache(watchCtx, t, client, "/fast", keyOfHost)
		errc := make(chan error, 1)
		go func() { errc <- c.WaitForRevision(ctx, c.Revision()+1000) }()
		require.Eventually(t, func() bool { return storage.CacheWaiting(c) }, waitTimeout, pollInterval)
		stopWatch()
		err := <-errc
		require.ErrorIs(t, err, context.Canceled, "the cause, the watch's context, is lost")
		assert.Contains(t, err.Error(), "watch stopped")
	})
}

func TestCacheSyncOnAnIdlePrefixAsksForProgress(t *testing.T) {
	verifyNoLeaks(t)
	rc := &rpcCounter{}
	client := newClient(t,
		storagetest.WithServerConfig(func(cfg *embed.Config) { cfg.WatchProgressNotifyInterval = 10 * time.Minute }),
		storagetest.WithClientConfig(func(cfg *clientv3.Config) { cfg.DialOptions = rc.dialOptions() }))
	ctx := testContext(t)
	c := startCache(ctx, t, client, "/idle", keyOfHost)

	// Writes outside the prefix move etcd's revision; no event reaches the
	// cache, so only a progress notification can move its revision.
	for i := range 5 {
		put(t, client, "/elsewhere", fmt.Sprint(i))
	}
	before := c.Revision()
	start := time.Now()
	require.NoError(t, c.Sync(ctx))
	t.Logf("Sync on an idle prefix returned in %v after %d progress requests", time.Since(start), rc.progress.Load())
	assert.GreaterOrEqual(t, c.Revision(), before+5)
	assert.Positive(t, rc.progress.Load(), "no progress request was sent")
	assert.Positive(t, storage.CacheRecovery(c).Progress, "no progress notification moved the cache")
}

func TestCacheConcurrentSyncsShareTheirReads(t *testing.T) {
	verifyNoLeaks(t)
	rc := &rpcCounter{}
	client := newClient(t, storagetest.WithClientConfig(func(cfg *clientv3.Config) { cfg.DialOptions = rc.dialOptions() }))
	ctx := testContext(t)
	c := startCache(ctx, t, client, "/shared", keyOfHost)
	const callers = 64

	t.Run("a burst costs two revision reads", func(t *testing.T) {
		// The first caller's read is held until every other caller has
		// joined the next one, so the count does not depend on how fast
		// the callers arrive.
		block := make(chan struct{})
		rc.block.Store(&block)
		rc.ranges.Store(0)
		var wg sync.WaitGroup
		errs := make([]error, callers)
		wg.Go(func() { errs[0] = c.Sync(ctx) })
		require.Eventually(t, func() bool { return rc.ranges.Load() == 1 }, waitTimeout, pollInterval)
		for i := 1; i < callers; i++ {
			wg.Go(func() { errs[i] = c.Sync(ctx) })
		}
		require.Eventually(t, func() bool { return storage.SyncJoiners(c) == callers-1 }, waitTimeout, pollInterval)
		rc.block.Store(nil)
		close(block)
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "caller %d", i)
		}
		assert.EqualValues(t, 2, rc.ranges.Load(), "revision reads for %d concurrent Syncs", callers)
	})

	t.Run("waiters share their progress requests", func(t *testing.T) {
		// A write outside the prefix leaves the cache behind: every caller
		// waits for a progress notification.
		put(t, client, "/elsewhere", "x")
		rc.progress.Store(0)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, callers)
		for i := range callers {
			wg.Go(func() { errs[i] = c.Sync(ctx) })
		}
		wg.Wait()
		elapsed := time.Since(start)
		for i, err := range errs {
			require.NoError(t, err, "caller %d", i)
		}
		// One request at once, then at most one per interval while anyone
		// waits: the bound grows with the time the waits took.
		bound := int64(elapsed/(100*time.Millisecond)) + 2
		t.Logf("%d Syncs took %v and sent %d progress requests", callers, elapsed, rc.progress.Load())
		assert.Positive(t, rc.progress.Load())
		assert.LessOrEqual(t, rc.progress.Load(), bound, "progress requests were not shared")
	})
}

func TestCacheVerifyReportsAndRepairsADivergedCache(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	for _, name := range []string{"a", "b", "c"} {
		put(t, client, "/verify/"+name, rawHostJSON("verify/"+name, 1))
	}
	c := startCache(ctx, t, client, "/verify", keyOfHost)
	require.NoError(t, c.Verify(ctx), "a fresh cache differs from etcd")

	t.Run("a wrong mod revision is named and repaired", func(t *testing.T) {
		want, err := storage.NewGetOp[*host](client, "/verify/b").Exec(ctx)
		require.NoError(t, err)
		require.True(t, storage.CorruptCacheEntry(c, "/verify/b", 1))
		relists := storage.CacheRecovery(c).Relists
		err = c.Verify(ctx)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "/verify/b: cache has mod revision 1, etcd has ")
		assert.Greater(t, storage.CacheRecovery(c).Relists, relists, "Verify did not re-read")
		require.NoError(t, c.Verify(ctx), "the re-read did not repair the cache")
		got, err := c.Get("/verify/b").Exec(ctx)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	})

	t.Run("a lost key is named and repaired", func(t *testing.T) {
		require.True(t, storage.DropCacheEntry(c, "/verify/a"))
		err := c.Verify(ctx)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "/verify/a: cache has no such key, etcd has mod revision ")
		require.NoError(t, c.Verify(ctx))
		_, err = c.Get("/verify/a").Exec(ctx)
		require.NoError(t, err)
	})

	t.Run("writes through the cache are not differences", func(t *testing.T) {
		require.NoError(t, c.Put(&host{Name: "verify/d"}).Exec(ctx))
		_, err := c.DeleteByKey("/verify/c").Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, c.Verify(ctx))
	})

	t.Run("past a compaction it verifies at the current revision", func(t *testing.T) {
		for i := range 3 {
			put(t, client, "/elsewhere", fmt.Sprint(i))
		}
		rev := put(t, client, "/elsewhere", "last")
		require.Less(t, c.Revision(), rev, "forcing failed: the cache reached the compaction already")
		_, err := client.Compact(ctx, rev, clientv3.WithCompactPhysical())
		require.NoError(t, err)
		require.NoError(t, c.Verify(ctx))
		assert.GreaterOrEqual(t, c.Revision(), rev, "Verify did not move to the current revision")
	})

	t.Run("errors name the cache", func(t *testing.T) {
		c.Stop()
		err := c.Verify(ctx)
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "verify: cache /verify/"), err.Error())
	})
}
