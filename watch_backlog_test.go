package storage_test

// The backlog of a slow handler (watch_backlog.go): a handler that falls
// behind gets each change once, the backlog stays bounded, and the watch
// resumes (or re-reads after a compaction) from the last event delivered.

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"
)

func TestEdgeSlowHandlerResumesFromLastDeliveredAfterDrop(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 1, UseBridge: true})
	ctx := testContext(t)
	client := clus.Client(0)
	for i, tc := range []struct {
		name       string
		maxPending int // 0: the library's default
	}{
		// clientv3 resumes a dropped stream by itself, from the last
		// revision it received (it buffers what the handler has not taken):
		// the library's counters stay at zero here.
		{name: "stream dropped twice while a slow handler delivers"},
		// A backlog of two makes the library cancel the stream and resume it
		// itself, from the last revision it delivered, around the drops.
		{name: "stream dropped while the library resumes after its backlog", maxPending: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/edge/slow/%d/", i)
			const slow = 260 * time.Millisecond
			var rec recorder[*host]
			var entered atomic.Int64
			op := storage.NewWatchPrefixOp[*host](client, prefix)
			if tc.maxPending > 0 {
				storage.SetMaxPending(op, tc.maxPending)
			}
			require.NoError(t, op.Watch(ctx, func(e *storage.Event[*host]) error {
				if entered.Add(1) == 1 && tc.maxPending > 0 {
					// The backlog path is forced, not left to the writes
					// outpacing a 260 ms handler: the first event waits
					// until the library has cancelled its stream.
					// Not asserted here: the backlog count is checked once
					// the writes are done.
					for deadline := time.Now().Add(20 * time.Second); storage.WatchRecovery(op).Backlogs < 1 && time.Now().Before(deadline); {
						time.Sleep(10 * time.Millisecond) // polling interval
					}
				}
				time.Sleep(slow) // the handler's work
				return rec.handle(e)
			}))
			defer op.Close()
			var want []ackedWrite
			write := func(from, to int) {
				for n := from; n < to; n++ {
					want = append(want, putAckedOnce(ctx, t, client, fmt.Sprintf("%s%02d", prefix, n), n))
				}
			}

			t.Log("phase 1: six writes; drop the connections while the handler is on the second")
			write(0, 6)
			require.Eventually(t, func() bool { return entered.Load() >= 2 }, waitTimeout, 10*time.Millisecond, "the handler never got the second event")
			clus.Members[0].Bridge().DropConnections()

			t.Log("phase 2: six more writes; drop again while the handler is on the eighth")
			write(6, 12)
			require.Eventually(t, func() bool { return entered.Load() >= 8 }, waitTimeout, 10*time.Millisecond, "the handler never got the eighth event")
			clus.Members[0].Bridge().DropConnections()

			t.Log("phase 3: every write arrives once, in order")
			require.Eventually(t, func() bool { return rec.lastRev() >= want[len(want)-1].rev }, waitTimeout, 10*time.Millisecond,
				"delivered %v of %d", lazy(func() any { return rec.len() }), len(want))
			requireAckedEvents(t, want, rec.snapshot())
			rc := storage.WatchRecovery(op)
			t.Logf("recovery %+v", rc)
			if tc.maxPending > 0 {
				assert.GreaterOrEqual(t, rc.Backlogs, int64(1), "the backlog never cancelled the stream")
				assert.GreaterOrEqual(t, rc.Resumes, int64(1), "the library never resumed")
			}
			requireNotStopped(t, "the watch", op.Error())
		})
	}
}

// putAckedOnce puts a new key through a connection that the test drops: a
// put that fails in flight may or may not have been applied, so before
// retrying it reads the key back (each key is written once, so finding it
// means the put was applied, at its mod revision).
func putAckedOnce(ctx context.Context, t *testing.T, client *clientv3.Client, key string, port int) ackedWrite {
	t.Helper()
	for attempt := 0; ; attempt++ {
		w, err := putAcked(ctx, client, key, port)
		if err == nil {
			return w
		}
		require.Less(t, attempt, 10, "%v", err)
		t.Logf("%v; reading it back", err)
		resp, err := client.Get(ctx, key)
		if err == nil && len(resp.Kvs) == 1 {
			return ackedWrite{key: key, rev: resp.Kvs[0].ModRevision, port: port}
		}
	}
}

// writeSingles writes total single puts prefix+N (port N) from workers
// goroutines at full speed and returns them in revision order.
func writeSingles(ctx context.Context, t *testing.T, client *clientv3.Client, prefix string, total, workers int) []ackedWrite {
	t.Helper()
	var log ackedLog
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for g := range workers {
		wg.Go(func() {
			for n := g; n < total; n += workers {
				w, err := putAcked(ctx, client, fmt.Sprintf("%s%05d", prefix, n), n)
				if err != nil {
					errc <- err
					return
				}
				log.add(w)
			}
		})
	}
	wg.Wait()
	close(errc)
	require.NoError(t, <-errc)
	return log.sorted()
}

// blockedWatch starts a prefix watch whose handler, once the first read
// is delivered, waits for release before each event; the returned func
// releases it (idempotent), and Close runs when t ends, after a release.
func blockedWatch(ctx context.Context, t *testing.T, client *clientv3.Client, prefix string) (storage.WatchOp[*host], *recorder[*host], func()) {
	t.Helper()
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	var armed atomic.Bool
	rec := new(recorder[*host])
	op := storage.NewWatchPrefixOp[*host](client, prefix)
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*host]) error {
		if armed.Load() {
			<-gate
		}
		return rec.handle(e)
	}))
	armed.Store(true)
	t.Cleanup(func() {
		release()
		op.Close()
	})
	return op, rec, release
}

func TestEdgeSlowHandlerBacklogIsBounded(t *testing.T) {
	verifyNoLeaks(t)
	srv := newServer(t)
	client, writer := srv.Client(), newServerClient(t, srv)
	ctx := testContext(t)
	const prefix = "/edge/backlog/"
	total := scaled(t, "EDGE_BACKLOG_EVENTS", 10000)
	op, rec, release := blockedWatch(ctx, t, client, prefix)

	t.Logf("phase 1: %d single puts from 8 goroutines while the handler is blocked", total)
	start := time.Now()
	writes := writeSingles(ctx, t, writer, prefix, total, 8)
	t.Logf("written in %v", time.Since(start).Round(time.Millisecond))
	require.Eventually(t, func() bool { return storage.WatchRecovery(op).Backlogs >= 1 }, waitTimeout, 10*time.Millisecond,
		"the watch never cancelled its stream for the blocked handler: %+v", lazy(func() any { return storage.WatchRecovery(op) }))

	t.Log("phase 2: release the handler; every event arrives once, in order")
	release()
	require.Eventually(t, func() bool { return rec.lastRev() >= writes[len(writes)-1].rev }, waitTimeout, 10*time.Millisecond,
		"delivered %v of %d", lazy(func() any { return rec.len() }), total)
	requireAckedEvents(t, writes, rec.snapshot())
	rc := storage.WatchRecovery(op)
	t.Logf("recovery %+v", rc)
	// The receiver cancels the stream once more than maxPending (1000)
	// events wait, so the backlog peaks at 1000 plus the events of the one
	// response that crossed the line. A live (synced) watcher gets one
	// response per write, here one event; but a watcher that resumes behind
	// the head of the log (as this one does after each cancel), or one that
	// etcd demoted to a victim because its stream lagged, is caught up in
	// batches of up to 1000 revisions per response (mvcc's
	// watchBatchMaxRevs), and fragments are reassembled into one response by
	// clientv3. With single puts a revision holds one event, so no response
	// carries more than 1000: the honest bound is 1000 + 1000.
	assert.LessOrEqual(t, rc.MaxPending, int64(1000+1000), "backlog not bounded")
	assert.Greater(t, rc.MaxPending, int64(1000), "the backlog never passed the bound, yet the stream was cancelled")
	assert.GreaterOrEqual(t, rc.Backlogs, int64(1))
	assert.GreaterOrEqual(t, rc.Resumes, int64(1), "the library never resumed after its backlog")
	assert.Zero(t, rc.Relists, "nothing was compacted, yet the watch re-read")
	requireNotStopped(t, "the watch", op.Error())
}

func TestEdgeSlowHandlerBacklogRelistsAfterCompaction(t *testing.T) {
	verifyNoLeaks(t)
	srv := newServer(t)
	client, writer := srv.Client(), newServerClient(t, srv)
	ctx := testContext(t)
	const prefix = "/edge/backlogc/"
	const keys = 300
	for k := range keys / 2 {
		_, err := putAcked(ctx, writer, fmt.Sprintf("%sk%03d", prefix, k), -1)
		require.NoError(t, err)
	}
	op, rec, release := blockedWatch(ctx, t, client, prefix)
	churn := func(ops, seed int) {
		t.Helper()
		var wg sync.WaitGroup
		errc := make(chan error, 4)
		for g := range 4 {
			wg.Go(func() {
				for j := g; j < ops; j += 4 {
					key := fmt.Sprintf("%sk%03d", prefix, (j*7+seed)%keys)
					var err error
					if j%5 == 4 {
						_, _, err = deleteAcked(ctx, writer, key)
					} else {
						_, err = putAcked(ctx, writer, key, seed+j)
					}
					if err != nil {
						errc <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errc)
		require.NoError(t, <-errc)
	}

	t.Log("phase 1: 3000 puts, deletes and re-creates over 300 keys while the handler is blocked")
	churn(3000, 0)
	require.Eventually(t, func() bool { return storage.WatchRecovery(op).Backlogs >= 1 }, waitTimeout, 10*time.Millisecond,
		"the watch never cancelled its stream for the blocked handler: %+v", lazy(func() any { return storage.WatchRecovery(op) }))

	resp, err := writer.Get(ctx, "/")
	require.NoError(t, err)
	t.Logf("phase 2: compact at revision %d while the handler is still blocked", resp.Header.Revision)
	_, err = writer.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	require.NoError(t, err)

	t.Log("phase 3: release the handler: it drains its backlog, finds its revision compacted, re-reads")
	release()
	want := etcdKeyStates(ctx, t, writer, prefix)
	require.Eventually(t, func() bool {
		return storage.WatchRecovery(op).Relists >= 1 && maps.Equal(replayEvents(t, rec.snapshot()), want)
	}, waitTimeout, 10*time.Millisecond, "the replay never matched etcd: %+v", lazy(func() any { return storage.WatchRecovery(op) }))

	t.Log("phase 4: 300 more changes after the re-read reach the replay too")
	churn(300, 1)
	want = etcdKeyStates(ctx, t, writer, prefix)
	require.Eventually(t, func() bool { return maps.Equal(replayEvents(t, rec.snapshot()), want) }, waitTimeout, 10*time.Millisecond,
		"the replay never matched etcd after the re-read")
	events := rec.snapshot()
	for i := 1; i < len(events); i++ {
		require.GreaterOrEqual(t, events[i].Revision, events[i-1].Revision, "events out of revision order at %d", i)
	}
	rc := storage.WatchRecovery(op)
	t.Logf("%d events replay to etcd's %d keys; recovery %+v", len(events), len(want), rc)
	assert.GreaterOrEqual(t, rc.Backlogs, int64(1))
	assert.GreaterOrEqual(t, rc.Relists, int64(1))
	requireNotStopped(t, "the watch", op.Error())
}

func TestWatchHandlerFallingBehindGetsEachChangeOnce(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)

	tests := []struct {
		name    string
		compact bool // compact past every change while the stream is cancelled
	}{
		{name: "resuming from the last delivered revision", compact: false},
		{name: "relisting when etcd compacted meanwhile", compact: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fmt.Sprintf("/lag/%d/", i)
			op := fallingBehind(t, c, p, tt.compact)
			rec := storage.WatchRecovery(op)
			if tt.compact {
				require.GreaterOrEqual(t, rec.Relists, int64(1), "recovery: %+v", rec)
			} else {
				require.GreaterOrEqual(t, rec.Resumes, int64(1), "recovery: %+v", rec)
				require.Zero(t, rec.Relists, "recovery: %+v", rec)
			}
		})
	}
}

// fallingBehind runs a prefix watch whose handler blocks on its first
// live event. With a backlog bound of 2 the watch cancels its stream while
// the handler is stuck, and resumes from the last delivered revision once it
// returns (re-reading if compact made that revision history). It checks that
// every change arrived once, in order, and that the events replay to etcd's
// contents, and returns the op for its counters.
func fallingBehind(t *testing.T, c *clientv3.Client, p string, compact bool) storage.WatchOp[*record] {
	t.Helper()
	ctx := testContext(t)
	for _, k := range []string{"k1", "k2", "k3"} {
		put(t, c, p+k, recordNamedJSON(k))
	}

	events := make(chan storage.Event[*record], 4096)
	blocked, release := make(chan struct{}), make(chan struct{})
	var blockOnce, releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	op := storage.NewWatchPrefixOp[*record](c, p)
	storage.SetMaxPending(op, 2)
	t.Cleanup(op.Close)
	t.Cleanup(unblock) // runs before Close, should the test fail while blocked
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*record]) error {
		events <- *e
		if e.Key == p+"block" {
			blockOnce.Do(func() {
				close(blocked)
				<-release
			})
		}
		return nil
	}))
	require.Len(t, events, 3, "initial read")

	put(t, c, p+"block", recordNamedJSON("block"))
	waitSignal(t, blocked, "the handler got the first live event")
	t.Log("phase 1: the handler is stuck; queue more events than the backlog bound")
	deleteRev(t, c, p+"k1")
	put(t, c, p+"a", recordNamedJSON("a1"))
	put(t, c, p+"k2", recordNamedJSON("two'"))
	put(t, c, p+"b", recordNamedJSON("b1"))
	require.Eventually(t, func() bool { return storage.WatchRecovery(op).Backlogs >= 1 }, waitTimeout, 5*time.Millisecond)

	t.Log("phase 2: change the prefix while the stream is cancelled")
	deleteRev(t, c, p+"k2")
	deleteRev(t, c, p+"k3")
	put(t, c, p+"k3", recordNamedJSON("three'"))
	put(t, c, p+"a", recordNamedJSON("a2"))
	last := put(t, c, p+"c", recordNamedJSON("c1"))
	if compact {
		_, err := c.Compact(ctx, last, clientv3.WithCompactPhysical())
		require.NoError(t, err)
	}

	t.Log("phase 3: release the handler; every change must arrive once")
	unblock()
	put(t, c, p+"sentinel", recordNamedJSON("last"))
	replay := map[string]replayState{}
	modRevs := map[string]int64{} // last delivered mod revision per key
	var lastRev int64
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for i := 0; ; i++ {
		var e storage.Event[*record]
		select {
		case e = <-events:
		case <-timer.C:
			t.Fatalf("no sentinel within %v; replay %v", waitTimeout, replay)
		}
		require.GreaterOrEqual(t, e.Revision, lastRev, "event %d out of revision order: %+v", i, e)
		lastRev = e.Revision
		switch e.Type {
		case storage.EventTypePut:
			// A key's mod revision only grows: a change delivered again (a
			// resume from too early, a re-read repeating an unchanged key)
			// would repeat one.
			require.Greater(t, e.Value.ModRevision(), modRevs[e.Key], "event %d: %s delivered twice", i, e.Key)
			require.GreaterOrEqual(t, e.Revision, e.Value.ModRevision(), "event %d", i)
			require.Equal(t, e.Value.Version() == 1, e.IsCreate, "event %d: IsCreate", i)
			require.Equal(t, e.Value.Version() > 1, e.IsModify, "event %d: IsModify", i)
			if !compact {
				// Nothing was compacted: no version may be skipped.
				require.Equal(t, replay[e.Key].Version+1, e.Value.Version(), "event %d: %s", i, e.Key)
			}
			modRevs[e.Key] = e.Value.ModRevision()
			replay[e.Key] = replayState{e.Value.Name, e.Value.Version()}
		case storage.EventTypeDelete:
			require.Contains(t, replay, e.Key, "event %d: delete of a key already deleted", i)
			delete(replay, e.Key)
		default:
			t.Fatalf("event %d: %+v", i, e)
		}
		if e.Key == p+"sentinel" {
			break
		}
	}
	require.Equal(t, readReplayState(t, c, p), replay)
	return op
}
