package storage_test

// The reads of a watch (watch_read.go): the initial read, the re-read after a
// compaction or a response too large to receive, an idle prefix, and the
// handoff from the read to the watch.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
	"github.com/etcdkit/storage/storagetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/tests/v3/framework/integration"
)

func TestEdgeLargeCatchUpArrivesWhole(t *testing.T) {
	largeCatchUp(t, 1<<20)
}

// Values stored at 0.75 to 1 MiB: etcd fragments a watch response at its
// request limit plus 512 KiB (2 MiB by default), not at the client's receive
// limit, so two such values share a fragment larger than the 1.5 MiB the
// client accepts. Each resume then fails with ResourceExhausted again, and
// only a paged re-read can catch up.
func TestEdgeLargeCatchUpOfValuesUnderOneMiBArrivesWhole(t *testing.T) {
	largeCatchUp(t, 640<<10)
}

// largeCatchUp cuts a watch off (its handler blocked past its backlog,
// its member stopped) while ten values of rawSize random bytes are written,
// on clients whose receive limit is 1.5 MiB, and checks that every value
// arrives, at a watch and at a cache.
func largeCatchUp(t *testing.T, rawSize int) {
	const recvLimit = 3 << 19 // 1.5 MiB
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3, ClientMaxCallRecvMsgSize: recvLimit})
	ctx := testContext(t)
	leader := clus.WaitLeader(t)
	cut := (leader + 1) % 3
	c, w := clus.Client(cut), clus.Client(leader)
	const prefix = "/edge/large/"
	keyOf := func(b *namedBlob) string { return prefix + b.Name }

	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	var rec recorder[*namedBlob]
	op := storage.NewWatchPrefixOp[*namedBlob](c, prefix)
	// A backlog of one: the library itself cancels the stream while the
	// handler is blocked, so the catch-up below is its own resume.
	storage.SetMaxPending(op, 1)
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*namedBlob]) error {
		if e.Key == prefix+"gate" {
			<-gate
		}
		return rec.handle(e)
	}))
	cache := storage.NewCache[*namedBlob](c, prefix, keyOf)
	require.NoError(t, cache.Start(ctx))
	t.Cleanup(func() {
		release()
		op.Close()
		cache.Stop()
	})
	want := map[string]*namedBlob{}
	var order []string
	var revs []int64
	write := func(b *namedBlob) {
		p := storage.NewPutOp(w, keyOf(b), b)
		require.NoError(t, p.Exec(ctx))
		want[keyOf(b)] = b
		order = append(order, keyOf(b))
		revs = append(revs, p.Revision())
	}

	t.Logf("phase 1: block the handler on a small value through member %d; two more overflow its backlog of 1", cut)
	for _, name := range []string{"gate", "filler-1", "filler-2"} {
		write(&namedBlob{Name: name})
	}
	require.Eventually(t, func() bool { return storage.WatchRecovery(op).Backlogs >= 1 }, waitTimeout, 10*time.Millisecond,
		"the backlog never cancelled the stream: %+v", lazy(func() any { return storage.WatchRecovery(op) }))

	t.Logf("phase 2: stop member %d; write ten values of %d random bytes through member %d; restart it", cut, rawSize, leader)
	clus.Members[cut].Stop(t)
	for i := range 10 {
		write(&namedBlob{Name: fmt.Sprintf("big-%d", i), Data: randomBytes(t, rawSize)})
	}
	kv, err := w.Get(ctx, prefix+"big-0")
	require.NoError(t, err)
	t.Logf("each stored as %d bytes (%.3f MiB); client receive limit %d", len(kv.Kvs[0].Value), float64(len(kv.Kvs[0].Value))/(1<<20), recvLimit)
	require.NoError(t, clus.Members[cut].Restart(t))
	clus.WaitLeader(t)

	t.Log("phase 3: release the handler: the library resumes from the last value delivered and catches up")
	release()
	if !assert.Eventually(t, func() bool { return rec.len() >= len(order) }, waitTimeout, 10*time.Millisecond) {
		cached, err := cache.GetPrefix("").Exec(ctx)
		t.Fatalf("delivered %d of %d; recovery %+v; the cache answers %d of %d items, error %v (recovery %+v); "+
			"a raw clientv3 watch (WithFragment) on the same client from the first big value gets: %s",
			rec.len(), len(order), storage.WatchRecovery(op), len(cached), len(order), err, storage.CacheRecovery(cache),
			probeWatch(ctx, c, prefix, revs[3]))
	}
	got := rec.snapshot()
	rc := storage.WatchRecovery(op)
	t.Logf("watch recovery %+v", rc)
	require.Len(t, got, len(order))
	for i, e := range got {
		require.Equalf(t, storage.EventTypePut, e.Type, "event %d: %s %v", i, e.Key, e.Err)
		require.Equal(t, order[i], e.Key, "event %d", i)
		require.Truef(t, bytes.Equal(want[e.Key].Data, e.Value.Data), "event %d (%s): wrong data", i, e.Key)
		if rc.Relists == 0 {
			require.Equal(t, revs[i], e.Revision, "event %d", i)
			continue
		}
		// A re-read delivers each value at the read's revision; every key
		// here is written once, so no version is lost by it.
		require.GreaterOrEqual(t, e.Revision, revs[i], "event %d", i)
		if i > 0 {
			require.GreaterOrEqual(t, e.Revision, got[i-1].Revision, "event %d", i)
		}
	}
	assert.GreaterOrEqual(t, rc.Resumes, int64(1), "the library never resumed")

	t.Log("phase 4: the cache over the same prefix converges")
	require.Eventually(t, func() bool { return holdsAll(ctx, cache, keyOf, want) }, waitTimeout, 10*time.Millisecond,
		"the cache never held every value; recovery %+v", lazy(func() any { return storage.CacheRecovery(cache) }))
	t.Logf("cache recovery %+v", storage.CacheRecovery(cache))

	t.Log("phase 5: a cache started now reads the prefix in pages under the receive limit")
	late := storage.NewCache[*namedBlob](c, prefix, keyOf)
	require.NoError(t, late.Start(ctx))
	defer late.Stop()
	require.True(t, holdsAll(ctx, late, keyOf, want), "the late cache misses values")
	requireNotStopped(t, "the watch", op.Error())
	requireNotStopped(t, "the cache", cache.Error())
}

// probeWatch describes the first response of a raw clientv3 watch of
// prefix from rev with WithFragment, as the library's watch asks.
func probeWatch(ctx context.Context, client *clientv3.Client, prefix string, rev int64) string {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, ok := <-client.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithFragment())
	if !ok {
		return "a closed channel"
	}
	return fmt.Sprintf("%d events, error %v", len(resp.Events), resp.Err())
}

// holdsAll reports whether the cache holds exactly want.
func holdsAll(ctx context.Context, cache storage.Cache[*namedBlob], keyOf func(*namedBlob) string, want map[string]*namedBlob) bool {
	got, err := cache.GetPrefix("").Exec(ctx)
	if err != nil || len(got) != len(want) {
		return false
	}
	for _, b := range got {
		if w, ok := want[keyOf(b)]; !ok || !bytes.Equal(w.Data, b.Data) {
			return false
		}
	}
	return true
}

func TestEdgeIdlePrefixWithProgressNotifyResumesWithoutReread(t *testing.T) {
	idlePrefix(t, true)
}

func TestEdgeIdlePrefixWithoutProgressNotifyRereadsCorrectly(t *testing.T) {
	idlePrefix(t, false)
}

// idlePrefix watches a prefix nobody writes while other keys churn and
// the cluster compacts past the watch's start; then the watch's member
// restarts, and is paused long enough to cancel the stream (ErrNoLeader),
// which makes the library resume from its own revision. With progress
// notifications that revision has moved past the compaction and no re-read
// is needed; without them the watch re-reads and delivers nothing, since
// nothing changed.
func idlePrefix(t *testing.T, progress bool) {
	// etcd keeps the interval in a process-wide variable that each member's
	// watch server sets when the interval is non-zero: set it explicitly
	// either way (10 minutes is etcd's default, so "off" for a test), and
	// put the default back for later tests.
	interval := 10 * time.Minute
	if progress {
		interval = 200 * time.Millisecond
	}
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3, WatchProgressNotifyInterval: interval})
	t.Cleanup(func() { v3rpc.SetProgressReportInterval(10 * time.Minute) })
	ctx := testContext(t)
	leader := clus.WaitLeader(t)
	watched := (leader + 1) % 3
	wm, writer := clus.Members[watched], clus.Client(leader)
	const prefix = "/edge/idle/"
	var initial []ackedWrite
	for _, k := range []string{"a", "b", "c"} {
		w, err := putAcked(ctx, writer, prefix+k, len(initial))
		require.NoError(t, err)
		initial = append(initial, w)
	}

	t.Logf("phase 1: watch %s through member %d (progress notifications every %v)", prefix, watched, interval)
	var rec recorder[*host]
	op := storage.NewWatchPrefixOp[*host](clus.Client(watched), prefix)
	require.NoError(t, op.Watch(ctx, rec.handle))
	t.Cleanup(op.Close)
	require.Equal(t, 3, rec.len())
	start := rec.lastRev()

	t.Log("phase 2: 200 writes to other keys, then compact past the watch's start")
	var last int64
	for i := range 200 {
		w, err := putAcked(ctx, writer, fmt.Sprintf("/edge/busy/%03d", i%20), i)
		require.NoError(t, err)
		last = w.rev
	}
	_, err := writer.Compact(ctx, last, clientv3.WithCompactPhysical())
	require.NoError(t, err)
	t.Logf("watch started at %d, compacted at %d", start, last)
	if progress {
		// A notification moves the watch's revision only when the store's
		// moved, so keep other keys changing meanwhile, until the library
		// has taken a notification past the compaction: only then is a
		// resume that needs no re-read forced (a notification counted
		// after the compaction may still have been sent before it).
		stop, done := make(chan struct{}), make(chan error, 1)
		go func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					done <- nil
					return
				case <-tick.C:
				}
				if _, err := putAcked(ctx, writer, "/edge/busy/after", i); err != nil {
					done <- err
					return
				}
			}
		}()
		require.Eventually(t, func() bool { return storage.WatchRecovery(op).ProgressRev >= last }, waitTimeout, 10*time.Millisecond,
			"no progress notification moved the watch past the compaction at %d: %+v", last,
			lazy(func() any { return storage.WatchRecovery(op) }))
		close(stop)
		require.NoError(t, <-done)
	} else {
		require.Zero(t, storage.WatchRecovery(op).Progress, "progress notifications arrive although they are off")
	}

	t.Logf("phase 3: restart member %d", watched)
	wm.Stop(t)
	require.NoError(t, wm.Restart(t))
	clus.WaitLeader(t)

	// The restart makes the watch resume from its own revision; without
	// progress notifications that meets the compaction and the library
	// re-reads. A pause while that read waits for its quorum would hold the
	// read, not force a resume, so phase 4 starts once it is done.
	require.Eventually(t, func() bool {
		return !storage.WatchReading(op) && (progress || storage.WatchRecovery(op).Relists >= 1)
	}, waitTimeout, 10*time.Millisecond, "the watch did not recover from the restart: %+v",
		lazy(func() any { return storage.WatchRecovery(op) }))

	// The pause forces the library's own resume: the member cancels the
	// stream once it has missed its leader for a few election timeouts of
	// its own clock, later on a slow machine, so it lasts until then.
	resumes := storage.WatchRecovery(op).Resumes
	t.Logf("phase 4: pause member %d until it loses its leader and cancels the stream, and the library resumes", watched)
	wm.Pause()
	paused := time.Now()
	require.Eventually(t, func() bool { return storage.WatchRecovery(op).Resumes > resumes }, waitTimeout, 10*time.Millisecond,
		"the library never resumed while member %d was paused (recovery %v)", watched,
		lazy(func() any { return storage.WatchRecovery(op) }))
	t.Logf("resumed after a pause of %v", time.Since(paused).Round(time.Millisecond))
	wm.Resume()
	clus.WaitLeader(t)

	t.Log("phase 5: a write to the idle prefix arrives exactly once")
	w, err := putAcked(ctx, writer, prefix+"d", 99)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return rec.lastRev() >= w.rev }, waitTimeout, 10*time.Millisecond,
		"the write never arrived; recovery %+v", lazy(func() any { return storage.WatchRecovery(op) }))
	got := rec.snapshot()
	for i := range initial {
		initial[i].rev = start // items of the first read carry its revision
	}
	// A re-read of an unchanged prefix delivers nothing: any extra event
	// here is a spurious one.
	requireAckedEvents(t, append(initial, w), got)
	rc := storage.WatchRecovery(op)
	t.Logf("recovery %+v", rc)
	// Phase 4 forced a resume; which recovery it then took is what the
	// test is about: with the revision past the compaction (proven in
	// phase 2) no re-read, without progress notifications a re-read, since
	// every resume from the watch's own revision meets the compaction.
	if progress {
		assert.Zero(t, rc.Relists, "the watch re-read although progress notifications had moved it past the compaction")
	} else {
		assert.GreaterOrEqual(t, rc.Relists, int64(1), "the watch never re-read, yet it resumed from a compacted revision")
	}
	requireNotStopped(t, "the watch", op.Error())
}

func TestEdgeListWatchHandoffDeliversEachWriteOnce(t *testing.T) {
	verifyNoLeaks(t)
	srv := newServer(t)
	client, writerClient := srv.Client(), newServerClient(t, srv)
	ctx := testContext(t)
	const prefix = "/edge/handoff/"
	const keys = 20
	watches := scaled(t, "EDGE_HANDOFF_WATCHES", 200)

	// The anchor never changes: every first read has an item, whose
	// revision is the read's.
	var log ackedLog
	w, err := putAcked(ctx, writerClient, prefix+"anchor", -1)
	require.NoError(t, err)
	log.add(w)
	for k := range keys {
		w, err := putAcked(ctx, writerClient, fmt.Sprintf("%sk%02d", prefix, k), k)
		require.NoError(t, err)
		log.add(w)
	}

	const writers = 4
	t.Logf("phase 1: start %d watches one after another while %d writers change the prefix at full speed", watches, writers)
	stop, writersDone := make(chan struct{}), make(chan error, writers)
	for g := range writers {
		go func() {
			writersDone <- func() error {
				for j := g; ; j += writers {
					select {
					case <-stop:
						return nil
					default:
					}
					key := fmt.Sprintf("%sk%02d", prefix, j%keys)
					if j%5 == 4 {
						w, ok, err := deleteAcked(ctx, writerClient, key)
						if err != nil {
							return err
						}
						if ok {
							log.add(w)
						}
						continue
					}
					w, err := putAcked(ctx, writerClient, key, j)
					if err != nil {
						return err
					}
					log.add(w)
				}
			}()
		}()
	}
	ops := make([]storage.WatchOp[*host], watches)
	recs := make([]*recorder[*host], watches)
	for i := range watches {
		recs[i] = new(recorder[*host])
		ops[i] = storage.NewWatchPrefixOp[*host](client, prefix)
		t.Cleanup(ops[i].Close)
		require.NoError(t, ops[i].Watch(ctx, recs[i].handle))
	}
	close(stop)
	for range writers {
		require.NoError(t, <-writersDone)
	}
	writes := log.sorted()
	last := writes[len(writes)-1].rev
	t.Logf("phase 2: %d writes; wait for every watch to reach revision %d", len(writes), last)
	require.Eventually(t, func() bool {
		for _, r := range recs {
			if r.lastRev() < last {
				return false
			}
		}
		return true
	}, waitTimeout, 10*time.Millisecond, "some watch never reached the last write")

	t.Log("phase 3: each write is in the first read or among the events, exactly once")
	var events int
	reads := map[int64]bool{}
	for i, r := range recs {
		got := r.snapshot()
		read := got[0].Revision
		reads[read] = true
		n := 0
		for n < len(got) && got[n].Revision == read {
			n++
		}
		// The first read equals the state of etcd at its revision.
		state := map[string]int{}
		split := 0
		for split < len(writes) && writes[split].rev <= read {
			if w := writes[split]; w.del {
				delete(state, w.key)
			} else {
				state[w.key] = w.port
			}
			split++
		}
		items := map[string]int{}
		for _, e := range got[:n] {
			require.Equalf(t, storage.EventTypePut, e.Type, "watch %d: first read item %s", i, describeEvent(e))
			items[e.Key] = e.Value.Port
		}
		require.Equalf(t, state, items, "watch %d: its first read (revision %d) is not etcd's state then", i, read)
		requireAckedEvents(t, writes[split:], got[n:])
		events += len(got) - n
	}
	t.Logf("%d watches: first reads at %d distinct revisions from %d to %d, %d events in all", watches, len(reads),
		recs[0].snapshot()[0].Revision, recs[watches-1].snapshot()[0].Revision, events)
	for i, op := range ops {
		requireNotStopped(t, fmt.Sprintf("watch %d", i), op.Error())
	}
}

func TestWatchInitialReadDeliversItemsAsPutsAtTheReadRevision(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)

	tests := []struct {
		name   string
		writes []keyValue // under the test's prefix, in order
		want   func(p string, readRev int64) []storage.Event[*host]
	}{{
		name:   "an empty prefix delivers nothing",
		writes: nil,
		want:   func(string, int64) []storage.Event[*host] { return nil },
	}, {
		name:   "a version 1 item is a create, a later version a modify, each with its version",
		writes: []keyValue{{"b", hostNamedJSON("b1")}, {"a", hostNamedJSON("a1")}, {"b", hostNamedJSON("b2")}, {"b", hostNamedJSON("b3")}},
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantPut(p+"a", "a1", 1, rev), wantPut(p+"b", "b3", 3, rev)}
		},
	}, {
		name:   "an undecodable item is an error event naming its key, and the read goes on",
		writes: []keyValue{{"a", hostNamedJSON("a")}, {"bad", "not json"}, {"c", hostNamedJSON("c")}},
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantPut(p+"a", "a", 1, rev), wantDecodeError(p+"bad", rev), wantPut(p+"c", "c", 1, rev)}
		},
	}, {
		name:   "a JSON null item is an error event",
		writes: []keyValue{{"null", "null"}},
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantDecodeError(p+"null", rev)}
		},
	}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fmt.Sprintf("/initial/%d/", i)
			for _, w := range tt.writes {
				put(t, c, p+w.key, w.value)
			}
			// Another key moves the revision on: the read revision is the
			// store's, not the last write under the prefix.
			readRev := put(t, c, "/elsewhere", hostNamedJSON("x"))

			_, rec := startWatch(t, c, p)

			want := tt.want(p, readRev)
			// Watch returns after the initial read: its events are all in.
			require.Len(t, rec.c, len(want))
			requireWatchEvents(t, want, rec.take(t, len(want)))

			rev := putNamed(t, c, p+"zz", "after")
			requireWatchEvents(t, []storage.Event[*host]{wantPut(p+"zz", "after", 1, rev)}, []storage.Event[*host]{rec.next(t)})
		})
	}
}

func TestWatchInitialReadOfALargePrefixDeliversEveryItemOnceInKeyOrder(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	const p, n = "/big/", 2345 // more than two pages of the read
	want := putPages(t, c, p, n)
	readRev := put(t, c, "/big", hostNamedJSON("outside")) // just outside the prefix

	_, rec := startWatch(t, c, p)
	events := rec.take(t, len(rec.c))
	require.Equal(t, want, eventKeys(events))
	for _, e := range events {
		require.Equal(t, wantPut(e.Key, e.Key, 1, readRev), e)
	}
}

func TestWatchRelistsWhenItsStartRevisionWasCompacted(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	const p = "/w/"

	putNamed(t, c, p+"k0", "zero") // unchanged throughout
	putNamed(t, c, p+"k1", "one")
	putNamed(t, c, p+"k2", "two")
	readRev := putNamed(t, c, p+"k3", "three")

	// The handler blocks on the last item of the initial read, so the watch
	// cannot start before the test has compacted past the read revision.
	rec := newEventQueue()
	blocked, release := make(chan struct{}), make(chan struct{})
	var blockOnce, releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	handle := func(e *storage.Event[*host]) error {
		rec.c <- *e
		if e.Key == p+"k3" {
			blockOnce.Do(func() {
				close(blocked)
				<-release
			})
		}
		return nil
	}
	op := storage.NewWatchPrefixOp[*host](c, p)
	t.Cleanup(op.Close)
	t.Cleanup(unblock) // runs before Close, should the test fail while blocked
	watchErr := make(chan error, 1)
	go func() { watchErr <- op.Watch(ctx, handle) }()

	waitSignal(t, blocked, "initial read reached its last item")
	t.Log("phase 1: change the prefix while the initial read is delivered, compact past the read revision")
	putNamed(t, c, p+"k1", "one'")
	deleteRev(t, c, p+"k2")
	deleteRev(t, c, p+"k3")
	putNamed(t, c, p+"k3", "three'")
	lastRev := putNamed(t, c, p+"k4", "four")
	_, err := c.Compact(ctx, lastRev, clientv3.WithCompactPhysical())
	require.NoError(t, err)

	t.Log("phase 2: release the handler; the watch from the read revision + 1 must relist")
	unblock()
	require.NoError(t, recvValue(t, watchErr), "Watch")
	initial := rec.take(t, 4)
	requireWatchEvents(t, []storage.Event[*host]{
		wantPut(p+"k0", "zero", 1, readRev), wantPut(p+"k1", "one", 1, readRev),
		wantPut(p+"k2", "two", 1, readRev), wantPut(p+"k3", "three", 1, readRev),
	}, initial)

	putNamed(t, c, p+"k9", "sentinel")
	later := rec.until(t, p+"k9")
	require.GreaterOrEqual(t, storage.WatchRecovery(op).Relists, int64(1))

	// The relist delivers what changed, each key once, at the re-read's
	// revision; k0 did not change and is not delivered again. The sentinel
	// comes from the re-read or from the watch after it.
	relisted := later[:len(later)-1]
	require.NotEmpty(t, relisted)
	relistRev := relisted[0].Revision
	require.GreaterOrEqual(t, relistRev, lastRev)
	slices.SortStableFunc(relisted, func(a, b storage.Event[*host]) int { return strings.Compare(a.Key, b.Key) })
	requireWatchEvents(t, []storage.Event[*host]{
		wantPut(p+"k1", "one'", 2, relistRev),
		wantDelete(p+"k2", relistRev),
		wantPut(p+"k3", "three'", 1, relistRev), // re-created: a create again
		wantPut(p+"k4", "four", 1, relistRev),
	}, relisted)

	requireReplayEqualsEtcd(t, c, p, append(initial, later...))
}

func TestWatchStopsOnAValueLargerThanTheReceiveLimit(t *testing.T) {
	verifyNoLeaks(t)
	const recvLimit = 128 << 10
	s, err := storagetest.Start()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	wc, err := s.NewClient(clientv3.Config{DialTimeout: 5 * time.Second, MaxCallRecvMsgSize: recvLimit})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wc.Close() }) // on failure; a second Close is harmless
	c, ctx := s.Client(), testContext(t)
	const p = "/w/"
	putNamed(t, c, p+"a", "a")

	// As in TestWatchRelistsWhenItsStartRevisionWasCompacted: the handler
	// holds the initial read while a value too large for the watch client
	// is written and the read revision compacted, so that the watch must
	// re-read, and even a page of one value exceeds the receive limit.
	blocked, release := make(chan struct{}), make(chan struct{})
	var blockOnce, releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	op := storage.NewWatchPrefixOp[*host](wc, p)
	t.Cleanup(op.Close)
	t.Cleanup(unblock)
	handle := func(e *storage.Event[*host]) error {
		blockOnce.Do(func() {
			close(blocked)
			<-release
		})
		return nil
	}
	watchErr := make(chan error, 1)
	go func() { watchErr <- op.Watch(ctx, handle) }()
	waitSignal(t, blocked, "initial read delivered")
	huge := make([]byte, 3*recvLimit)
	for i := range huge {
		huge[i] = 'a' + byte(rand.IntN(26)) // plain JSON: the raw put stores it as is
	}
	putNamed(t, c, p+"b", "b") // so that the compaction covers the read revision + 1
	last := putNamed(t, c, p+"huge", string(huge))
	_, err = c.Compact(ctx, last, clientv3.WithCompactPhysical())
	require.NoError(t, err)
	unblock()
	require.NoError(t, recvValue(t, watchErr), "Watch")

	t.Log("phase 1: the re-read cannot receive the huge value: the run stops with one error, no endless retry")
	err = recvValue(t, op.Error())
	require.ErrorContains(t, err, "receive limit")
	require.ErrorContains(t, err, p)
	relists := storage.WatchRecovery(op).Relists
	require.GreaterOrEqual(t, relists, int64(1))
	select {
	case err := <-op.Error():
		t.Fatalf("a second error: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	require.Equal(t, relists, storage.WatchRecovery(op).Relists, "relists after the run stopped")
}
