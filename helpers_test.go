package storage_test

// Helpers shared by the black-box tests: the test values (host, record,
// blob), etcd and client set-up, the wait bounds, event recorders and the
// readers of what etcd holds. A helper used by one file stays in that file.

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// verifyNoLeaks checks, when the test ends, that no goroutine started during
// it is left (register it before starting etcd: cleanups run in reverse).
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// put writes val to key and returns the write's revision. A three-member
// cluster on a loaded machine may time a proposal out (etcd's request
// timeout is 5 s plus two election timeouts, and the framework's elections
// are 100 ms); the put is then retried as a txn that writes only if key does
// not hold val yet. The retry is ordered after the timed-out proposal in
// the raft log, so a proposal that was applied late is not applied twice.
func put(t testing.TB, client *clientv3.Client, key, val string) int64 {
	t.Helper()
	ctx := testContext(t)
	resp, err := client.Put(ctx, key, val)
	if err == nil {
		return resp.Header.Revision
	}
	for attempt := 1; errors.Is(err, rpctypes.ErrTimeout) && attempt < 5; attempt++ {
		t.Logf("put %s: %v; retrying unless it was applied", key, err)
		var txn *clientv3.TxnResponse
		txn, err = client.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(key), "=", val)).
			Then(clientv3.OpGet(key)).
			Else(clientv3.OpPut(key, val)).Commit()
		switch {
		case err != nil:
		case txn.Succeeded:
			return txn.Responses[0].GetResponseRange().Kvs[0].ModRevision
		default:
			return txn.Header.Revision
		}
	}
	require.NoError(t, err, "put %s", key)
	return 0
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

// nextError returns the next error on errc (an Error() channel, or what a
// Watch run in a goroutine returned), failing the test if none comes within
// waitTimeout or if it is nil.
func nextError(t *testing.T, errc <-chan error, msgAndArgs ...any) error {
	t.Helper()
	err := recvValue(t, errc)
	require.Error(t, err, msgAndArgs...)
	return err
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
// Counts that make a test long can be raised this way (EDGE_BACKLOG_EVENTS,
// EDGE_HANDOFF_WATCHES, EDGE_HEAVY_WATCHES); the defaults keep each test
// under about 20 s with -race on two cores.
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

// requireNoFault checks that no error is ready on errc, an Error()
// channel: every fault of the fault tests is recoverable, and a recoverable
// fault is not an error. A nil received passes.
func requireNoFault(t *testing.T, errc <-chan error) {
	t.Helper()
	requireNothingSent(t, errc, false, "a recoverable fault must not be reported")
}

// requireNotStopped checks that nothing is ready on errc: what sent
// anything, even a nil, has stopped.
func requireNotStopped(t *testing.T, what string, errc <-chan error) {
	t.Helper()
	requireNothingSent(t, errc, true, what+" stopped")
}

// requireNothingSent checks, without waiting, that no error is ready on
// errc; a ready nil fails only with nilFails. It fails the test with msg and
// what it received.
func requireNothingSent(t *testing.T, errc <-chan error, nilFails bool, msg string) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil || nilFails {
			t.Fatalf("%s: %v", msg, err)
		}
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

// loadBlobs stores n values of size random bytes under prefix.
func loadBlobs(ctx context.Context, t testing.TB, client *clientv3.Client, prefix string, n, size int) {
	t.Helper()
	for i := range n {
		b := &namedBlob{Name: strconv.Itoa(i), Data: randomBytes(t, size)}
		require.NoError(t, storage.NewPutOp(client, fmt.Sprintf("%s%03d", prefix, i), b).Exec(ctx))
	}
}

// readLoop reads and decodes prefix with client until ctx ends, counting
// the reads done in reads; it returns the first error.
func readLoop(ctx context.Context, client *clientv3.Client, prefix string, reads *atomic.Int64) error {
	return loopReads(ctx, reads, func(ctx context.Context) error {
		_, err := storage.NewGetPrefixOp[*namedBlob](client, prefix).Exec(ctx)
		return err
	})
}

// rawReadLoop is readLoop with the raw client: bytes only, no decoding.
func rawReadLoop(ctx context.Context, client *clientv3.Client, prefix string, reads *atomic.Int64) error {
	return loopReads(ctx, reads, func(ctx context.Context) error {
		_, err := client.Get(ctx, prefix, clientv3.WithPrefix())
		return err
	})
}

// loopReads calls read until ctx ends, counting the reads done in reads; it
// returns the first error that is not ctx's end.
func loopReads(ctx context.Context, reads *atomic.Int64, read func(ctx context.Context) error) error {
	for ctx.Err() == nil {
		if err := read(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		reads.Add(1)
	}
	return nil
}

// eventQueue collects, in order, the events its handle receives.
type eventQueue struct {
	c chan storage.Event[*host]
}

func newEventQueue() *eventQueue {
	// Large enough that handle never blocks in these tests: a blocked
	// handler would hold up Close.
	return &eventQueue{c: make(chan storage.Event[*host], 4096)}
}

func (r *eventQueue) handle(e *storage.Event[*host]) error {
	r.c <- *e
	return nil
}

// next returns the next event, failing the test if none comes in waitTimeout.
func (r *eventQueue) next(t *testing.T) storage.Event[*host] {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case e := <-r.c:
		return e
	case <-timer.C:
		t.Fatalf("no watch event within %v", waitTimeout)
		return storage.Event[*host]{}
	}
}

// take returns the next n events.
func (r *eventQueue) take(t *testing.T, n int) []storage.Event[*host] {
	t.Helper()
	events := make([]storage.Event[*host], n)
	for i := range events {
		events[i] = r.next(t)
	}
	return events
}

// until returns the events up to and including the first one for key.
func (r *eventQueue) until(t *testing.T, key string) []storage.Event[*host] {
	t.Helper()
	var events []storage.Event[*host]
	for {
		e := r.next(t)
		events = append(events, e)
		if e.Key == key {
			return events
		}
	}
}

// requireQuiet asserts that no event arrives within quietWindow.
func (r *eventQueue) requireQuiet(t *testing.T) {
	t.Helper()
	select {
	case e := <-r.c:
		t.Fatalf("unexpected watch event: %+v", e)
	case <-time.After(quietWindow):
	}
}

// hostNamedJSON is the stored form of a host named name, as NewPutOp writes it.
func hostNamedJSON(name string) string {
	data, err := json.Marshal(&host{Name: name})
	if err != nil {
		panic(err)
	}
	return string(data)
}

// putNamed stores a host named name at key and returns the put's revision.
func putNamed(t *testing.T, c *clientv3.Client, key, name string) int64 {
	t.Helper()
	return put(t, c, key, hostNamedJSON(name))
}

// deleteRev deletes key and returns the delete's revision.
func deleteRev(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := c.Delete(testContext(t), key)
	require.NoError(t, err)
	return resp.Header.Revision
}

// txnRev commits ops unconditionally and returns the txn's revision.
func txnRev(t *testing.T, c *clientv3.Client, ops ...clientv3.Op) int64 {
	t.Helper()
	resp, err := c.Txn(testContext(t)).Then(ops...).Commit()
	require.NoError(t, err)
	require.True(t, resp.Succeeded)
	return resp.Header.Revision
}

func wantPut(key, name string, version, rev int64) storage.Event[*host] {
	return storage.Event[*host]{Type: storage.EventTypePut, Key: key, Value: hostWithVersion(name, 0, version),
		IsCreate: version == 1, IsModify: version > 1, Revision: rev}
}

func wantDelete(key string, rev int64) storage.Event[*host] {
	return storage.Event[*host]{Type: storage.EventTypeDelete, Key: key, Revision: rev}
}

// wantDecodeError is an undecodable value at key: the event's Err must name the key.
func wantDecodeError(key string, rev int64) storage.Event[*host] {
	return storage.Event[*host]{Type: storage.EventTypeError, Key: key, Revision: rev,
		Err: fmt.Errorf("failed to decode %q", key)}
}

// requireWatchEvents compares events field by field. For an expected error event
// it requires Key, Revision, no Value and an Err containing the expected
// error's text (IsCreate and IsModify are not part of the claim there).
func requireWatchEvents(t *testing.T, want, got []storage.Event[*host]) {
	t.Helper()
	require.Len(t, got, len(want), "events: %+v", got)
	for i := range want {
		w, g := want[i], got[i]
		if w.Type != storage.EventTypeError {
			require.Equal(t, w, g, "event %d", i)
			continue
		}
		require.Equal(t, storage.EventTypeError, g.Type, "event %d: %+v", i, g)
		require.Equal(t, w.Key, g.Key, "event %d", i)
		require.Equal(t, w.Revision, g.Revision, "event %d", i)
		require.Nil(t, g.Value, "event %d", i)
		require.ErrorContains(t, g.Err, w.Err.Error(), "event %d", i)
	}
}

// startWatch starts a prefix watch recording into a new recorder, closed
// when the test ends.
func startWatch(t *testing.T, c *clientv3.Client, prefix string) (storage.WatchOp[*host], *eventQueue) {
	t.Helper()
	op := storage.NewWatchPrefixOp[*host](c, prefix)
	rec := newEventQueue()
	require.NoError(t, op.Watch(testContext(t), rec.handle))
	t.Cleanup(op.Close)
	return op, rec
}

// keyValue is a raw write made before a watch starts.
type keyValue struct{ key, value string }

func prefixKeys(p string, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = p + k
	}
	return out
}

func eventKeys(events []storage.Event[*host]) []string {
	keys := make([]string, len(events))
	for i, e := range events {
		keys[i] = e.Key
	}
	return keys
}

// replayState is what a replay of events knows of a key.
type replayState struct {
	Name    string
	Version int64
}

// requireReplayEqualsEtcd applies events in order to an empty map and
// requires the result to equal a fresh read of the prefix.
func requireReplayEqualsEtcd(t *testing.T, c *clientv3.Client, prefix string, events []storage.Event[*host]) {
	t.Helper()
	replay := map[string]replayState{}
	for _, e := range events {
		switch e.Type {
		case storage.EventTypePut:
			replay[e.Key] = replayState{e.Value.Name, e.Value.Version()}
		case storage.EventTypeDelete:
			delete(replay, e.Key)
		default:
			t.Fatalf("unexpected event %+v", e)
		}
	}
	require.Equal(t, readReplayState(t, c, prefix), replay)
}

// readReplayState reads prefix straight from etcd.
func readReplayState(t *testing.T, c *clientv3.Client, prefix string) map[string]replayState {
	t.Helper()
	resp, err := c.Get(testContext(t), prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	out := make(map[string]replayState, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var h host
		require.NoError(t, json.Unmarshal(kv.Value, &h), "key %s", kv.Key)
		out[string(kv.Key)] = replayState{h.Name, kv.Version}
	}
	return out
}

// recordNamedJSON is the stored form of a record named name.
func recordNamedJSON(name string) string { return fmt.Sprintf(`{"name":%q,"count":0}`, name) }

// recvValue returns the next value on c, failing the test after waitTimeout.
func recvValue[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("nothing within %v", waitTimeout)
		var zero T
		return zero
	}
}

// putPages stores n hosts under p, 100 per txn: more than a page of the
// watch's read when n > 1000. It returns their keys in order.
func putPages(t *testing.T, c *clientv3.Client, p string, n int) []string {
	t.Helper()
	var keys []string
	for start := 0; start < n; start += 100 {
		var ops []clientv3.Op
		for i := start; i < min(start+100, n); i++ {
			k := fmt.Sprintf("%s%05d", p, i)
			keys = append(keys, k)
			ops = append(ops, clientv3.OpPut(k, hostNamedJSON(k)))
		}
		txnRev(t, c, ops...)
	}
	return keys
}

// currentRevision returns etcd's revision now.
func currentRevision(t *testing.T, client *clientv3.Client) int64 {
	t.Helper()
	resp, err := client.Get(testContext(t), "/no/such/key")
	require.NoError(t, err)
	return resp.Header.Revision
}

// blob holds random bytes: its JSON (base64) hardly compresses, so a blob
// reaches size limits that gzip would otherwise keep it under.
type blob struct {
	storage.StoredValue
	Data []byte `json:"data"`
}
