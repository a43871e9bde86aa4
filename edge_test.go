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
	"fmt"
	"os"
	"slices"
	"strconv"
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
