//go:build storage_testhooks

package storage_test

// Cache subscriptions judged by internal/watchcheck against a ground truth
// (a raw clientv3 watch, truthRecorder): fifty subscribers of one cache with
// a slow one, and subscriptions across a compaction re-read, a member
// restart and a partition. The subscriptions report their initial puts and
// every difference they deliver through the restart hook, so the checker
// knows which events are read items.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"
	"google.golang.org/grpc"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
	"github.com/etcdkit/storage/internal/watchcheck"
)

func keyOfTaggedValue(v *taggedValue) string { return v.Key }

// watchRecorded starts a subscription of c on prefix, recorded by a new
// historyRec and closed when the test ends. Its handler first checks that
// the cache holds the event's state (its revision has reached the event, and
// a Get of the key returns the event's mod revision or a newer one), then
// records the event, then calls then (if not nil).
func watchRecorded(ctx context.Context, t *testing.T, c storage.Cache[*taggedValue], name, prefix string,
	bad *violationLog, then func(e *storage.Event[*taggedValue])) (storage.WatchOp[*taggedValue], *historyRec) {
	t.Helper()
	rec := &historyRec{name: name, prefix: prefix}
	op := c.Watch(prefix)
	storage.SetWatchRestartHook(op, rec.restart)
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*taggedValue]) error {
		checkCacheHolds(ctx, c, bad, name, e)
		err := rec.handle(e)
		if then != nil {
			then(e)
		}
		return err
	}), name)
	t.Cleanup(op.Close)
	return op, rec
}

// checkCacheHolds records in bad what the cache lacks of e's state.
func checkCacheHolds(ctx context.Context, c storage.Cache[*taggedValue], bad *violationLog, name string, e *storage.Event[*taggedValue]) {
	if rev := c.Revision(); rev < e.Revision {
		bad.add("%s: %s %s@%d: the cache is at revision %d", name, e.Type, e.Key, e.Revision, rev)
	}
	got, err := c.Get(e.Key).Exec(ctx)
	switch {
	case errors.Is(err, storage.ErrNotFound): // a delete, or deleted since
	case err != nil:
		bad.add("%s: %s %s@%d: cache Get: %v", name, e.Type, e.Key, e.Revision, err)
	case e.Type == storage.EventTypePut && got.ModRevision() < e.Value.ModRevision():
		bad.add("%s: put %s@%d: the cache holds the older mod revision %d", name, e.Key, e.Revision, got.ModRevision())
	case e.Type == storage.EventTypeDelete && got.ModRevision() < e.Revision:
		bad.add("%s: delete %s@%d: the cache still holds mod revision %d", name, e.Key, e.Revision, got.ModRevision())
	}
}

// txnKey is key n of writeTxns under prefix: even keys under prefix+"a/",
// odd ones under prefix+"b/".
func txnKey(prefix string, n int) string { return fmt.Sprintf("%s%c/k%02d", prefix, "ab"[n%2], n) }

// writeTxns commits n txns of ten changes each to keys under prefix (txn
// i puts ten of 30 keys, and every fourth deletes one of them instead),
// each with a tag of its own, retrying a txn that failed. It returns the
// revision of the last one.
func writeTxns(ctx context.Context, t *testing.T, client *clientv3.Client, prefix string, from, n int) int64 {
	t.Helper()
	var rev int64
	for i := from; i < from+n; i++ {
		ops := make([]clientv3.Op, 10)
		for j := range ops {
			key := txnKey(prefix, j*3+i%3)
			if i%4 == 0 && j == i%10 {
				ops[j] = clientv3.OpDelete(key)
				continue
			}
			ops[j] = clientv3.OpPut(key, fmt.Sprintf(`{"key":%q,"tag":"t%d.%d"}`, key, i, j))
		}
		require.NoError(t, retryWrite(ctx, func(ctx context.Context) error {
			resp, err := client.Txn(ctx).Then(ops...).Commit()
			if err == nil {
				rev = resp.Header.Revision
			}
			return err
		}))
	}
	return rev
}

// waitDelivered waits until every recorder has delivered up to rev.
func waitDelivered(t *testing.T, rev int64, recs ...*historyRec) {
	t.Helper()
	for _, rec := range recs {
		require.Eventually(t, func() bool { return rec.delivered() >= rev }, waitTimeout, pollInterval,
			"%s delivered up to %v, want %d", rec.name, lazy(func() any { return rec.delivered() }), rev)
	}
}

// judgeSubscriptions checks every recorded history against the ground
// truth (watchcheck's rules 1 to 7) and its replay against a fresh read of
// prefix. A handler gets the changes of one revision (a txn's, a re-read's
// difference) one call at a time, so a history whose last event is at last
// may still be missing some of them: each is judged once its replay equals
// the fresh read, or after waitTimeout with what it has.
func judgeSubscriptions(ctx context.Context, t *testing.T, truth *truthRecorder, client *clientv3.Client, prefix string, last int64, recs ...*historyRec) {
	t.Helper()
	require.NoError(t, truth.waitReached(ctx, last))
	tr, err := truth.snapshot()
	require.NoError(t, err)
	items, err := storage.NewGetPrefixOp[*taggedValue](client, prefix).Exec(ctx)
	require.NoError(t, err)
	fresh := map[string]watchcheck.KV{}
	for _, v := range items {
		fresh[v.Key] = watchcheck.KV{Value: v.Tag, Version: v.Version()}
	}
	for _, rec := range recs {
		assert.Eventually(t, func() bool { return watchcheck.Replay(rec.history(), fresh) == nil },
			waitTimeout, pollInterval, "%s: its replay never equalled etcd", rec.name)
		h := rec.history()
		require.NoError(t, watchcheck.Watch(h, tr), rec.name)
		require.NoError(t, watchcheck.Replay(h, fresh), rec.name)
	}
}

func TestCacheWatchFiftySubscribersWithASlowOneAllReplayEtcdAndOnlyTheSlowOneLags(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	writer := s.Client()
	var creates watchCreates
	cacheClient := newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{creates.dialOption()}})
	const prefix = "/fan/"
	truth := startTruthRecorder(writer, prefix, currentRevision(t, writer))
	t.Cleanup(truth.stop)
	writeTxns(ctx, t, writer, prefix, 0, 10)
	c := startCache(ctx, t, cacheClient, prefix, keyOfTaggedValue)
	var bad violationLog

	t.Log("phase 1: 49 subscriptions, and a slow one whose handler blocks on the block key until released")
	var ops []storage.WatchOp[*taggedValue]
	var fast []*historyRec
	for i := range 49 {
		op, rec := watchRecorded(ctx, t, c, fmt.Sprintf("fast%02d", i), prefix, &bad, nil)
		ops, fast = append(ops, op), append(fast, rec)
	}
	blocked, release := make(chan struct{}), make(chan struct{})
	var returned atomic.Bool
	var blockOnce, releaseOnce sync.Once
	slowOp, slow := watchRecorded(ctx, t, c, "slow", prefix, &bad, func(e *storage.Event[*taggedValue]) {
		if e.Key == prefix+"block" {
			blockOnce.Do(func() {
				close(blocked)
				<-release
				returned.Store(true)
			})
		}
	})
	ops = append(ops, slowOp)
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the Close of the subscriptions
	put(t, writer, prefix+"block", fmt.Sprintf(`{"key":%q,"tag":"block"}`, prefix+"block"))
	waitSignal(t, blocked, "the slow handler blocked")

	t.Log("phase 2: while it blocks, 150 txns of ten changes, more than its queue may hold")
	last := writeTxns(ctx, t, writer, prefix, 10, 150)
	waitDelivered(t, last, fast...)
	require.False(t, returned.Load(), "the slow handler returned before it was released")
	require.GreaterOrEqual(t, storage.WatchRecovery(slowOp).Backlogs, int64(1), "the slow subscription's queue never overflowed")
	require.Less(t, slow.delivered(), last)

	t.Log("phase 3: release it: it gets the difference from the cache, then the changes after it")
	unblock()
	last = writeTxns(ctx, t, writer, prefix, 160, 20)
	waitDelivered(t, last, append(fast, slow)...)
	require.GreaterOrEqual(t, storage.WatchRecovery(slowOp).Relists, int64(1), "the slow subscription was never resynced")
	for _, op := range ops[:len(fast)] {
		if r := storage.WatchRecovery(op); r.Backlogs > 0 {
			t.Logf("a fast subscription lagged on this machine too: %+v", r) // allowed; not the claim
		}
	}

	t.Log("phase 4: every subscription against the ground truth and a fresh read; one etcd watch")
	judgeSubscriptions(ctx, t, truth, writer, prefix, last, append(fast, slow)...)
	bad.require(t)
	require.EqualValues(t, 1, creates.n.Load(), "watch create requests of the cache's client")

	t.Log("phase 5: Stop ends them all")
	c.Stop()
	for _, op := range ops {
		require.ErrorContains(t, nextError(t, op.Error()), "cache stopped")
	}
}

func TestFaultCacheWatchDeliversTheDifferenceAfterTheCacheReReadsACompaction(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	writer := s.Client()
	p := newCutProxy(t, strings.TrimPrefix(s.Endpoints()[0], "http://"))
	cacheClient := newExtraClient(t, s, cutProxyClientConfig(p))
	const prefix = "/cmp/"
	truth := startTruthRecorder(writer, prefix, currentRevision(t, writer))
	t.Cleanup(truth.stop)
	writeTxns(ctx, t, writer, prefix, 0, 10)
	c := startCache(ctx, t, cacheClient, prefix, keyOfTaggedValue)
	var bad violationLog
	all, whole := watchRecorded(ctx, t, c, "all", prefix, &bad, nil)
	_, part := watchRecorded(ctx, t, c, "part", prefix+"b", &bad, nil)

	t.Log("phase 1: changes with the cache connected")
	last := writeTxns(ctx, t, writer, prefix, 10, 10)
	waitDelivered(t, last, whole)

	t.Log("phase 2: cut the cache off; change, delete and re-create keys; compact past its watch")
	p.setCut(true)
	writeTxns(ctx, t, writer, prefix, 20, 10)
	_, err := writer.Delete(ctx, txnKey(prefix, 1))
	require.NoError(t, err)
	last = writeTxns(ctx, t, writer, prefix, 30, 3)
	require.NoError(t, truth.waitReached(ctx, last))
	_, err = writer.Compact(ctx, last, clientv3.WithCompactPhysical())
	require.NoError(t, err)

	t.Log("phase 3: reconnect: the cache re-reads, its subscriptions get the difference")
	p.setCut(false)
	last = writeTxns(ctx, t, writer, prefix, 33, 5)
	waitDelivered(t, last, whole, part)
	require.NotZero(t, storage.CacheRecovery(c).Relists, "the cache never re-read")
	require.NotZero(t, storage.WatchRecovery(all).Relists, "the subscription never got a difference")
	judgeSubscriptions(ctx, t, truth, writer, prefix, last, whole)
	judgeSubscriptions(ctx, t, truth, writer, prefix+"b/", last, part)
	bad.require(t)
	requireNotStopped(t, "subscription", all.Error())
}

func TestFaultCacheWatchAcrossAMemberRestartAndAPartition(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3, WatchProgressNotifyInterval: 100 * time.Millisecond})
	ctx := testContext(t)
	const prefix = "/flt/"
	member := clus.Members[0]
	others := slices.Clone(clus.Members[1:])
	writer := clus.Client(1)
	truth := startTruthRecorder(clus.Client(2), prefix, currentRevision(t, writer))
	t.Cleanup(truth.stop)
	writeTxns(ctx, t, writer, prefix, 0, 10)
	// The cache's client knows member 0 only until phase 3: its watch
	// stream is certainly there.
	cacheClient := memberClient(t, member.GRPCURL)
	c := startCache(ctx, t, cacheClient, prefix, keyOfTaggedValue)
	var bad violationLog
	var recs []*historyRec
	var ops []storage.WatchOp[*taggedValue]
	for i := range 5 {
		op, rec := watchRecorded(ctx, t, c, fmt.Sprintf("sub%d", i), prefix, &bad, nil)
		ops, recs = append(ops, op), append(recs, rec)
	}

	t.Log("phase 1: changes with every member up")
	last := writeTxns(ctx, t, writer, prefix, 10, 10)
	waitDelivered(t, last, recs...)

	t.Log("phase 2: restart the cache's member 0 while changes go on through member 1")
	member.Stop(t)
	writeTxns(ctx, t, writer, prefix, 20, 10)
	require.NoError(t, member.Restart(t))
	last = writeTxns(ctx, t, writer, prefix, 30, 10)
	waitDelivered(t, last, recs...)
	t.Logf("cache recovery after the restart: %+v", storage.CacheRecovery(c)) // clientv3 may resume by itself

	t.Log("phase 3: give the client every member; partition member 0; changes through member 1")
	cacheClient.SetEndpoints(member.GRPCURL, others[0].GRPCURL, others[1].GRPCURL)
	before := storage.CacheRecovery(c)
	member.InjectPartition(t, others...)
	last = writeTxns(ctx, t, writer, prefix, 40, 10)
	// The partition holds until they arrive: member 0 ends the cache's
	// watch with ErrNoLeader, and the cache resumes on a healthy member.
	waitDelivered(t, last, recs...)
	require.Greater(t, storage.CacheRecovery(c).Resumes, before.Resumes, "the cache's watch never resumed")

	t.Log("phase 4: heal; more changes; judge")
	member.RecoverPartition(t, others...)
	clus.WaitLeader(t)
	last = writeTxns(ctx, t, writer, prefix, 50, 5)
	waitDelivered(t, last, recs...)
	judgeSubscriptions(ctx, t, truth, writer, prefix, last, recs...)
	bad.require(t)
	for _, op := range ops {
		requireNoFault(t, op.Error())
	}
	requireNoFault(t, c.Error())
}
