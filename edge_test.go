package storage_test

// Edge cases of WatchOp and Cache against real etcd: the faults where other
// watch caches broke. Each top-level test names the claim it checks. Fault
// tests log their phases and prove with the Recovery counters that the
// library's own recovery ran, since clientv3 resumes some faults by itself
// and events arriving prove nothing about the library.
//
// Counts that make a test long can be raised with environment variables
// (EDGE_BACKLOG_EVENTS, EDGE_HANDOFF_WATCHES, EDGE_HEAVY_WATCHES); the
// defaults keep each test under about 20 s with -race on two cores.

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/tests/v3/framework/integration"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// namedBlob holds random bytes: incompressible, so the stored size is what a
// test aims at. JSON writes them as base64, and the library's gzip (klauspost,
// default level) stores base64 of random bytes uncompressed: 1 MiB of random
// bytes is stored as 1.333 MiB.
type namedBlob struct {
	storage.StoredValue
	Name string `json:"name"`
	Data []byte `json:"data"`
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := crand.Read(b)
	require.NoError(t, err)
	return b
}

// scaled returns the integer in the environment variable name, or def.
func scaled(t testing.TB, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	require.NoError(t, err, "%s", name)
	return n
}

// newServer starts a single-member etcd for t, closed when t ends, for
// tests that need a second client (a writer that does not share the watch's
// connection).
func newServer(t testing.TB, opts ...storagetest.Option) *storagetest.Server {
	t.Helper()
	s, err := storagetest.Start(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// newServerClient returns a new client of s, closed when t ends (before s).
func newServerClient(t testing.TB, s *storagetest.Server) *clientv3.Client {
	t.Helper()
	c, err := s.NewClient(clientv3.Config{DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ackedWrite is one write a test made, with the revision etcd gave it.
type ackedWrite struct {
	key  string
	rev  int64
	del  bool
	port int
}

// ackedLog collects the writes of one or more writer goroutines.
type ackedLog struct {
	mu     sync.Mutex // protects writes
	writes []ackedWrite
}

func (l *ackedLog) add(w ackedWrite) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes = append(l.writes, w)
}

func (l *ackedLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.writes)
}

// sorted returns the writes in revision order.
func (l *ackedLog) sorted() []ackedWrite {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.writes)
	slices.SortFunc(out, func(a, b ackedWrite) int { return int(a.rev - b.rev) })
	return out
}

// putAcked stores a host with the raw client (as another service would).
func putAcked(ctx context.Context, client *clientv3.Client, key string, port int) (ackedWrite, error) {
	resp, err := client.Put(ctx, key, rawHostJSON("edge", port))
	if err != nil {
		return ackedWrite{}, fmt.Errorf("put %s: %w", key, err)
	}
	return ackedWrite{key: key, rev: resp.Header.Revision, port: port}, nil
}

// deleteAcked deletes key with the raw client; ok is false when there was
// nothing to delete (no revision, no event).
func deleteAcked(ctx context.Context, client *clientv3.Client, key string) (w ackedWrite, ok bool, err error) {
	resp, err := client.Delete(ctx, key)
	if err != nil {
		return ackedWrite{}, false, fmt.Errorf("delete %s: %w", key, err)
	}
	return ackedWrite{key: key, rev: resp.Header.Revision, del: true}, resp.Deleted > 0, nil
}

func describeEvent(e *storage.Event[*host]) string {
	port := "-"
	if e.Value != nil {
		port = strconv.Itoa(e.Value.Port)
	}
	return fmt.Sprintf("%s %s rev %d port %s err %v", e.Type, e.Key, e.Revision, port, e.Err)
}

func describeWrite(w ackedWrite) string {
	if w.del {
		return fmt.Sprintf("delete %s rev %d", w.key, w.rev)
	}
	return fmt.Sprintf("put %s rev %d port %d", w.key, w.rev, w.port)
}

// requireAckedEvents checks that got is exactly want: same kind, key,
// revision and value, in order, each once. It reports the first difference
// rather than thousands of lines.
func requireAckedEvents(t *testing.T, want []ackedWrite, got []*storage.Event[*host]) {
	t.Helper()
	for i := range min(len(want), len(got)) {
		w, g := want[i], got[i]
		ok := g.Key == w.key && g.Revision == w.rev
		if w.del {
			ok = ok && g.Type == storage.EventTypeDelete
		} else {
			ok = ok && g.Type == storage.EventTypePut && g.Value != nil && g.Value.Port == w.port
		}
		if !ok {
			t.Fatalf("event %d of %d: got %s, want %s (a gap or a duplicate)", i, len(got), describeEvent(g), describeWrite(w))
		}
	}
	switch {
	case len(got) > len(want):
		t.Fatalf("%d events, want %d: extra event %s", len(got), len(want), describeEvent(got[len(want)]))
	case len(got) < len(want):
		t.Fatalf("%d events, want %d: missing %s", len(got), len(want), describeWrite(want[len(got)]))
	}
}

// requireNotStopped checks that the watch has not stopped with an
// error.
func requireNotStopped(t *testing.T, what string, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		t.Fatalf("%s stopped: %v", what, err)
	default:
	}
}

// lazy formats as the value its func returns when formatted.
type lazy func() any

func (f lazy) String() string { return fmt.Sprintf("%+v", f()) }

// keyState is a key's value as a replay of events or a read gives it.
type keyState struct {
	port    int
	version int64
}

// replayEvents applies events in order to an empty map, as a client of the
// watch would.
func replayEvents(t *testing.T, events []*storage.Event[*host]) map[string]keyState {
	t.Helper()
	m := make(map[string]keyState)
	for _, e := range events {
		switch e.Type {
		case storage.EventTypePut:
			m[e.Key] = keyState{port: e.Value.Port, version: e.Value.Version()}
		case storage.EventTypeDelete:
			delete(m, e.Key)
		default:
			t.Fatalf("unexpected event %s", describeEvent(e))
		}
	}
	return m
}

// etcdKeyStates reads prefix from etcd.
func etcdKeyStates(ctx context.Context, t *testing.T, client *clientv3.Client, prefix string) map[string]keyState {
	t.Helper()
	resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	m := make(map[string]keyState, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var h host
		require.NoError(t, json.Unmarshal(kv.Value, &h))
		m[string(kv.Key)] = keyState{port: h.Port, version: kv.Version}
	}
	return m
}

// --- 1. paused member ---

// --- 2. slow handler ---

// --- 3. large catch-up ---

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
	clus := newCluster(t, &integration.ClusterConfig{Size: 3, ClientMaxCallRecvMsgSize: recvLimit})
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

// --- 4. undecodable value ---

func TestEdgeUndecodableValueMidStreamIsAnErrorEventAndTheWatchGoesOn(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	for i, tc := range []struct {
		name string
		bad  []byte
	}{
		{"not JSON", []byte("not json {")},
		{"JSON null", []byte("null")},
		{"JSON of another shape", []byte(`{"port":"eighty"}`)},
		{"gzip magic, broken stream", []byte{0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02, 0x03}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/edge/bad/%d/", i)
			key := prefix + "k"
			named := fmt.Sprintf("failed to decode %q", key)
			keyOf := func(h *host) string { return prefix + h.Name }
			good1 := storage.NewPutOp(client, key, &host{Name: "k", Port: 1})
			require.NoError(t, good1.Exec(ctx))

			var rec recorder[*host]
			op := storage.NewWatchPrefixOp[*host](client, prefix)
			require.NoError(t, op.Watch(ctx, rec.handle))
			defer op.Close()
			cache := storage.NewCache(client, prefix, keyOf)
			require.NoError(t, cache.Start(ctx))
			defer cache.Stop()
			// steps checks that the cache's answers only move forward: once
			// it answered a step, it never answers an earlier one (never the
			// value from before the bad bytes, for one).
			steps := &stepReader{cache: cache, key: key}
			require.Equal(t, 0, steps.await(t, 0), "the cache does not serve the first value")

			t.Log("phase 1: raw bytes that cannot be decoded")
			resp, err := client.Put(ctx, key, string(tc.bad))
			require.NoError(t, err)
			revBad := resp.Header.Revision
			steps.await(t, 1)
			_, err = cache.Get(key).Exec(ctx)
			require.ErrorContains(t, err, named)
			require.NotErrorIs(t, err, storage.ErrNotFound)
			_, etcdErr := storage.NewGetOp[*host](client, key).Exec(ctx)
			require.ErrorContains(t, etcdErr, named, "an etcd read says otherwise")
			_, err = cache.GetPrefix("").Exec(ctx)
			require.ErrorContains(t, err, named, "GetPrefix over the key")
			_, etcdErr = storage.NewGetPrefixOp[*host](client, prefix).Exec(ctx)
			require.ErrorContains(t, etcdErr, named, "an etcd prefix read says otherwise")

			// A watch and a cache started now meet the bytes in their first read.
			var late recorder[*host]
			lateOp := storage.NewWatchPrefixOp[*host](client, prefix)
			require.NoError(t, lateOp.Watch(ctx, late.handle), "the initial read stopped at the bad bytes")
			defer lateOp.Close()
			lateCache := storage.NewCache(client, prefix, keyOf)
			require.NoError(t, lateCache.Start(ctx))
			defer lateCache.Stop()
			_, err = lateCache.Get(key).Exec(ctx)
			require.ErrorContains(t, err, named)

			t.Log("phase 2: a good value")
			good2 := storage.NewPutOp(client, key, &host{Name: "k", Port: 2})
			require.NoError(t, good2.Exec(ctx))
			steps.await(t, 2)
			got, err := cache.Get(key).Exec(ctx)
			require.NoError(t, err)
			assert.Equal(t, hostWithVersion("k", 2, 3), got)

			t.Log("phase 3: a delete")
			del := storage.NewDeleteKeyOp(client, key)
			_, err = del.Exec(ctx)
			require.NoError(t, err)
			steps.await(t, 3)
			_, err = cache.Get(key).Exec(ctx)
			require.ErrorIs(t, err, storage.ErrNotFound)
			require.ErrorContains(t, err, key)
			all, err := cache.GetPrefix("").Exec(ctx)
			require.NoError(t, err)
			require.Empty(t, all)

			t.Log("phase 4: the watches saw each step once and go on")
			require.Eventually(t, func() bool { return rec.lastRev() >= del.Revision() }, waitTimeout, 10*time.Millisecond, "the watch missed the delete")
			require.Eventually(t, func() bool { return late.lastRev() >= del.Revision() }, waitTimeout, 10*time.Millisecond, "the late watch missed the delete")
			for _, r := range []*recorder[*host]{&rec, &late} {
				events := r.snapshot()
				first := 1
				if r == &late {
					first = 0 // its first read saw the bad bytes
				} else {
					require.Equal(t, storage.EventTypePut, events[0].Type)
					require.Equal(t, 1, events[0].Value.Port)
				}
				require.Len(t, events, first+3, "events: %v", events)
				bad := events[first]
				require.Equal(t, storage.EventTypeError, bad.Type)
				require.Equal(t, key, bad.Key)
				require.ErrorContains(t, bad.Err, named)
				if r == &rec {
					require.Equal(t, revBad, bad.Revision)
				}
				require.Equal(t, storage.EventTypePut, events[first+1].Type)
				require.Equal(t, hostWithVersion("k", 2, 3), events[first+1].Value)
				require.Equal(t, good2.Revision(), events[first+1].Revision)
				require.Equal(t, storage.EventTypeDelete, events[first+2].Type)
				require.Equal(t, key, events[first+2].Key)
				require.Equal(t, del.Revision(), events[first+2].Revision)
			}
			requireNotStopped(t, "the watch", op.Error())
			requireNotStopped(t, "the late watch", lateOp.Error())
			requireNotStopped(t, "the cache", cache.Error())
			requireNotStopped(t, "the late cache", lateCache.Error())
		})
	}
}

// stepReader reads one key of a cache and classifies the answer: 0 the
// first value (port 1), 1 a decode error, 2 the second value (port 2), 3 not
// found. Answers must never go back to an earlier step.
type stepReader struct {
	cache storage.Cache[*host]
	key   string
	seen  int
}

func (s *stepReader) step(t *testing.T) int {
	t.Helper()
	v, err := s.cache.Get(s.key).Exec(context.Background())
	step := -1
	switch {
	case errors.Is(err, storage.ErrNotFound):
		step = 3
	case err != nil && strings.Contains(err.Error(), "failed to decode"):
		step = 1
	case err != nil:
		t.Fatalf("cache get %s: %v", s.key, err)
	case v.Port == 1:
		step = 0
	case v.Port == 2:
		step = 2
	}
	require.GreaterOrEqualf(t, step, s.seen, "the cache went back from step %d to %d (%v, %v)", s.seen, step, v, err)
	s.seen = step
	return step
}

// await polls until the cache answers step want, checking every answer on
// the way, and then a few more.
func (s *stepReader) await(t *testing.T, want int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.step(t) < want {
		require.Truef(t, time.Now().Before(deadline), "the cache never reached step %d", want)
		time.Sleep(time.Millisecond) // polling interval
	}
	for range 20 {
		s.step(t)
	}
	return s.seen
}

// --- 5. idle prefix ---

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
	clus := newCluster(t, &integration.ClusterConfig{Size: 3, WatchProgressNotifyInterval: interval})
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

// --- 6. list/watch handoff ---

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

// --- 7. TTL across a leader kill ---

// --- 8. many watches, one client, heavy reads ---

// loadBlobs stores n values of size random bytes under prefix.
func loadBlobs(ctx context.Context, t testing.TB, client *clientv3.Client, prefix string, n, size int) {
	t.Helper()
	for i := range n {
		b := &namedBlob{Name: strconv.Itoa(i), Data: randomBytes(t, size)}
		require.NoError(t, storage.NewPutOp(client, fmt.Sprintf("%s%03d", prefix, i), b).Exec(ctx))
	}
}

// readLoop reads prefix with client until ctx ends, counting the reads
// done in reads; it returns the first error.
func readLoop(ctx context.Context, client *clientv3.Client, prefix string, reads *atomic.Int64) error {
	for ctx.Err() == nil {
		if _, err := storage.NewGetPrefixOp[*namedBlob](client, prefix).Exec(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		reads.Add(1)
	}
	return nil
}

// rawReadLoop is readLoop with the raw client: bytes only, no
// decoding.
func rawReadLoop(ctx context.Context, client *clientv3.Client, prefix string, reads *atomic.Int64) error {
	for ctx.Err() == nil {
		if _, err := client.Get(ctx, prefix, clientv3.WithPrefix()); err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		reads.Add(1)
	}
	return nil
}

// arrivalLog records when each port arrived at one watch.
type arrivalLog struct {
	mu sync.Mutex // protects at
	at map[int]time.Time
}

func (a *arrivalLog) handle(e *storage.Event[*host]) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e.Type == storage.EventTypePut {
		if _, dup := a.at[e.Value.Port]; dup {
			return fmt.Errorf("port %d delivered twice", e.Value.Port)
		}
		a.at[e.Value.Port] = time.Now()
	}
	return nil
}

func (a *arrivalLog) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at)
}

func TestEdgeManyWatchesOnOneClientWithHeavyReadsGetEveryEvent(t *testing.T) {
	verifyNoLeaks(t)
	srv := newServer(t)
	client, writer := srv.Client(), newServerClient(t, srv)
	ctx := testContext(t)
	const blobs, watched = "/edge/heavy/blobs/", "/edge/heavy/watched/"
	const writes = 100
	watches := scaled(t, "EDGE_HEAVY_WATCHES", 100)
	loadBlobs(ctx, t, writer, blobs, 200, 16<<10)

	t.Logf("phase 1: %d watches and a cache on one client", watches)
	ops := make([]storage.WatchOp[*host], watches)
	arrivals := make([]*arrivalLog, watches)
	for i := range watches {
		arrivals[i] = &arrivalLog{at: map[int]time.Time{}}
		ops[i] = storage.NewWatchPrefixOp[*host](client, watched)
		t.Cleanup(ops[i].Close)
		require.NoError(t, ops[i].Watch(ctx, arrivals[i].handle))
	}
	cache := storage.NewCache(client, watched, func(h *host) string { return watched + h.Name })
	require.NoError(t, cache.Start(ctx))
	defer cache.Stop()

	t.Log("phase 2: two goroutines loop 3 MiB prefix reads on the same client (one decoding, one raw) while another client writes")
	rctx, stopReads := context.WithCancel(ctx)
	var decodedReads, rawReads atomic.Int64
	decodedDone, rawDone := make(chan error, 1), make(chan error, 1)
	go func() { decodedDone <- readLoop(rctx, client, blobs, &decodedReads) }()
	go func() { rawDone <- rawReadLoop(rctx, client, blobs, &rawReads) }()
	defer stopReads()
	// The writes start once both loops are under way, however long a 3 MiB
	// read takes on this machine: the loops then run through every write.
	require.Eventually(t, func() bool { return decodedReads.Load() >= 1 && rawReads.Load() >= 1 }, 60*time.Second, 10*time.Millisecond,
		"the read loops never completed a read (%v decoded, %v raw)", lazy(func() any { return decodedReads.Load() }),
		lazy(func() any { return rawReads.Load() }))
	sent := make([]time.Time, writes)
	tick := time.NewTicker(20 * time.Millisecond)
	for i := range writes {
		<-tick.C // the writer's pace
		sent[i] = time.Now()
		_, err := putAcked(ctx, writer, fmt.Sprintf("%s%02d", watched, i), i)
		require.NoError(t, err)
	}
	tick.Stop()

	// Delivery must not starve behind the reads: every event arrives, once
	// (the handler fails on a duplicate). How fast depends on the machine,
	// so the latencies are logged, and the wait is generous.
	t.Log("phase 3: every event reaches every watch and the cache")
	require.Eventually(t, func() bool {
		for _, a := range arrivals {
			if a.count() < writes {
				return false
			}
		}
		return true
	}, 60*time.Second, 10*time.Millisecond, "some watch misses events")
	require.Eventually(t, func() bool {
		got, err := cache.GetPrefix("").Exec(ctx)
		return err == nil && len(got) == writes
	}, 60*time.Second, 10*time.Millisecond, "the cache misses events")
	stopReads()
	require.NoError(t, <-decodedDone)
	require.NoError(t, <-rawDone)
	var lat []time.Duration
	for _, a := range arrivals {
		a.mu.Lock()
		for port, at := range a.at {
			lat = append(lat, at.Sub(sent[port]))
		}
		a.mu.Unlock()
	}
	slices.Sort(lat)
	t.Logf("%d deliveries during %d + %d heavy reads: p50 %v, p99 %v, max %v", len(lat), decodedReads.Load(), rawReads.Load(),
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
	for i, op := range ops {
		requireNotStopped(t, fmt.Sprintf("watch %d", i), op.Error())
	}
	requireNotStopped(t, "the cache", cache.Error())
}

// BenchmarkWatchDeliveryLatency measures the time from a write to its
// event's arrival (at the handler of a WatchOp, or at the receiver of a raw
// clientv3 watch beside it), on a quiet client and on one that loops 3 MiB
// prefix reads. The writer uses a client of its own.
func BenchmarkWatchDeliveryLatency(b *testing.B) {
	for _, bc := range []struct {
		name       string
		heavy, raw bool
	}{
		{name: "idle"},
		{name: "heavy-reads", heavy: true},
		{name: "clientv3/idle", raw: true},
		{name: "clientv3/heavy-reads", heavy: true, raw: true},
	} {
		b.Run(bc.name, func(b *testing.B) { benchDelivery(b, bc.heavy, bc.raw) })
	}
}

func benchDelivery(b *testing.B, heavy, raw bool) {
	srv := newServer(b)
	client, writer := srv.Client(), newServerClient(b, srv)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	const prefix, blobs = "/bench/latency/", "/bench/blobs/"
	arrived := make(chan int)
	deliver := func(port int) {
		select {
		case arrived <- port:
		case <-ctx.Done():
		}
	}
	if raw {
		wch := client.Watch(ctx, prefix, clientv3.WithPrefix())
		wg.Go(func() {
			for resp := range wch {
				for _, ev := range resp.Events {
					var h host
					if err := json.Unmarshal(ev.Kv.Value, &h); err == nil {
						deliver(h.Port)
					}
				}
			}
		})
	} else {
		op := storage.NewWatchPrefixOp[*host](client, prefix)
		if err := op.Watch(ctx, func(e *storage.Event[*host]) error { deliver(e.Value.Port); return nil }); err != nil {
			b.Fatal(err)
		}
		defer op.Close()
	}
	if heavy {
		loadBlobs(ctx, b, writer, blobs, 200, 16<<10)
		var reads atomic.Int64
		wg.Go(func() { _ = readLoop(ctx, client, blobs, &reads) })
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := writer.Put(ctx, prefix+"k", rawHostJSON("bench", i)); err != nil {
			b.Fatal(err)
		}
		select {
		case port := <-arrived:
			if port != i {
				b.Fatalf("got write %d, want %d", port, i)
			}
		case <-time.After(10 * time.Second):
			b.Fatalf("write %d never arrived", i)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
}
