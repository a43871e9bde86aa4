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

// --- 6. list/watch handoff ---

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
