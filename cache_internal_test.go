package storage

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// These tests feed the cache's sink (what the watcher delivers) and its
// write-through methods (what a successful op records) in orders a real
// cluster produces only by chance: an op's result racing the watch event of
// the same or a later change. From outside, which one arrives first cannot be
// chosen; here it can.

// testItem is the value of the white-box cache tests.
type testItem struct {
	StoredValue
	Name string `json:"name"`
}

// startRev is the revision of the read every case starts the cache with.
const startRev = 10

// kvAt is a stored key: the name of its value, its version, its mod revision.
type kvAt struct {
	key, name    string
	version, rev int64
}

func (k kvAt) kv() *mvccpb.KeyValue {
	return &mvccpb.KeyValue{
		Key:            []byte(k.key),
		Value:          testItemBytes(k.name),
		Version:        k.version,
		ModRevision:    k.rev,
		CreateRevision: max(1, k.rev-k.version+1),
	}
}

func storedKVs(stored []kvAt) []*mvccpb.KeyValue {
	out := make([]*mvccpb.KeyValue, len(stored))
	for i, k := range stored {
		out[i] = k.kv()
	}
	return out
}

// testItemBytes is a testItem's stored form (plain JSON, as encodeValue gives).
func testItemBytes(name string) []byte { return fmt.Appendf(nil, `{"name":%q}`, name) }

func putEvent(key, name string, version, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: clientv3.EventTypePut, Kv: kvAt{key, name, version, rev}.kv()}
}

// deleteEvent is a watched delete: etcd sets the key and, as mod revision,
// the revision of the delete.
func deleteEvent(key string, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}}
}

// replayStep is one thing that reaches the cache.
type replayStep func(t *testing.T, c *cache[*testItem])

// watched delivers one watch response.
func watched(events ...*clientv3.Event) replayStep {
	return func(t *testing.T, c *cache[*testItem]) {
		t.Helper()
		require.NoError(t, c.apply(context.Background(), events))
	}
}

// progressTo delivers a progress notification at rev.
func progressTo(rev int64) replayStep {
	return func(_ *testing.T, c *cache[*testItem]) { c.progressed(rev) }
}

// relistAt delivers a re-read at rev (after a compaction).
func relistAt(rev int64, stored ...kvAt) replayStep {
	return func(t *testing.T, c *cache[*testItem]) {
		t.Helper()
		require.NoError(t, c.reset(context.Background(), storedKVs(stored), rev))
	}
}

// wrotePut records a successful cache put at rev.
func wrotePut(key, name string, version, rev int64) replayStep {
	return func(_ *testing.T, c *cache[*testItem]) { c.writePut(key, testItemBytes(name), version, rev) }
}

// wroteDelete records a successful cache delete of key at rev.
func wroteDelete(key string, rev int64) replayStep {
	return func(_ *testing.T, c *cache[*testItem]) { c.writeDelete(key, false, rev) }
}

// wroteDeletePrefix records a successful cache DeletePrefix at rev.
func wroteDeletePrefix(prefix string, rev int64) replayStep {
	return func(_ *testing.T, c *cache[*testItem]) { c.writeDelete(prefix, true, rev) }
}

// newTestCache returns a cache of /p/ started by a read of stored at startRev.
func newTestCache(t *testing.T, stored ...kvAt) *cache[*testItem] {
	t.Helper()
	c := &cache[*testItem]{prefix: "/p/", keyOf: func(v *testItem) string { return "/p/" + v.Name }, w: new(watcher)}
	require.NoError(t, c.reset(context.Background(), storedKVs(stored), startRev))
	return c
}

// contentsOf reads every item through GetPrefix("") as "name vVERSION @REV" by
// key, so that a case states value, version and mod revision at once.
func contentsOf(t *testing.T, c *cache[*testItem]) map[string]string {
	t.Helper()
	items, err := c.GetPrefix("").Exec(context.Background())
	require.NoError(t, err)
	c.mu.RLock()
	var entries []entry
	c.items.Ascend(func(e entry) bool {
		entries = append(entries, e)
		return true
	})
	c.mu.RUnlock()
	require.Len(t, items, len(entries))
	out := make(map[string]string, len(items))
	for i, v := range items {
		e := entries[i]
		out[e.key()] = fmt.Sprintf("%s v%d @%d", v.Name, v.Version(), e.modRevision)
	}
	return out
}

// tombstonesOf returns the keys with a tombstone, sorted, and the number of
// range tombstones.
func tombstonesOf(c *cache[*testItem]) ([]string, int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Sorted(maps.Keys(c.tombstones)), len(c.rangeTombstones)
}

func TestCacheOrdersWritesAndWatchEventsByRevision(t *testing.T) {
	const a, b, c, d = "/p/a", "/p/b", "/p/c", "/p/d"
	tests := []struct {
		name       string
		stored     []kvAt // read at startRev
		steps      []replayStep
		want       map[string]string
		tombstones []string // keys still holding a tombstone
		ranges     int      // range tombstones still held
	}{
		{
			name:   "a stale write-through put after a watched delete is ignored",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{watched(deleteEvent(a, 12)), wrotePut(a, "a2", 2, 11)},
			want:   map[string]string{},
		},
		{
			name:   "a stale write-through delete after a watched put is ignored",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{watched(putEvent(a, "a2", 2, 12)), wroteDelete(a, 11)},
			want:   map[string]string{a: "a2 v2 @12"},
		},
		{
			name:   "a stale watched put never overwrites a newer write-through put",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{wrotePut(a, "a3", 3, 14), watched(putEvent(a, "a2", 2, 12))},
			want:   map[string]string{a: "a3 v3 @14"},
		},
		{
			name:   "a stale watched delete never removes a newer write-through put",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{wrotePut(a, "a1", 1, 14), watched(deleteEvent(a, 12))},
			want:   map[string]string{a: "a1 v1 @14"},
		},
		{
			name:       "a write-through delete's tombstone blocks an older watched put",
			stored:     []kvAt{{a, "a1", 1, 5}},
			steps:      []replayStep{wroteDelete(a, 14), watched(putEvent(a, "a2", 2, 12))},
			want:       map[string]string{},
			tombstones: []string{a},
		},
		{
			name:       "a newer write-through put replaces a tombstone",
			stored:     []kvAt{{a, "a1", 1, 5}},
			steps:      []replayStep{wroteDelete(a, 12), wrotePut(a, "a-new", 1, 15)},
			want:       map[string]string{a: "a-new v1 @15"},
			tombstones: []string{a}, // the watch has not passed 12 yet
		},
		{
			name:   "a newer watched put replaces a tombstone",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps: []replayStep{
				wroteDelete(a, 12),
				watched(putEvent(b, "b1", 1, 11), putEvent(a, "a-new", 1, 13)),
			},
			want: map[string]string{a: "a-new v1 @13", b: "b1 v1 @11"},
		},
		{
			name:       "a tombstone stays while the watch is behind it",
			stored:     []kvAt{{a, "a1", 1, 5}},
			steps:      []replayStep{wroteDelete(a, 12), watched(putEvent(b, "b1", 1, 11))},
			want:       map[string]string{b: "b1 v1 @11"},
			tombstones: []string{a},
		},
		{
			name:   "a tombstone is purged when a later watch event passes it",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{wroteDelete(a, 12), watched(putEvent(b, "b1", 1, 13))},
			want:   map[string]string{b: "b1 v1 @13"},
		},
		{
			name:       "a tombstone stays through a progress notification short of it",
			stored:     []kvAt{{a, "a1", 1, 5}},
			steps:      []replayStep{wroteDelete(a, 12), progressTo(11)},
			want:       map[string]string{},
			tombstones: []string{a},
		},
		{
			name:   "a tombstone is purged when a progress notification passes it",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{wroteDelete(a, 12), progressTo(12)},
			want:   map[string]string{},
		},
		{
			name:   "a write-through put at a revision the watch delivered is ignored",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{watched(putEvent(a, "a3", 3, 13)), wrotePut(a, "a2", 2, 12)},
			want:   map[string]string{a: "a3 v3 @13"},
		},
		{
			name:   "a write-through put at a revision a progress notification passed is ignored",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{progressTo(13), wrotePut(b, "b1", 1, 12)},
			want:   map[string]string{a: "a1 v1 @5"},
		},
		{
			name:   "a write-through delete at a revision the watch passed leaves no tombstone",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{progressTo(13), wroteDelete(a, 12)},
			want:   map[string]string{a: "a1 v1 @5"},
		},
		{
			name:   "a write-through delete prefix blocks an older watched put of a key it never held",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps: []replayStep{
				wroteDeletePrefix("/p/d/", 14),
				watched(putEvent("/p/d/x", "d/x", 1, 12), putEvent("/p/dx/y", "dx/y", 1, 13)),
			},
			want:   map[string]string{a: "a1 v1 @5", "/p/dx/y": "dx/y v1 @13"},
			ranges: 1,
		},
		{
			name:   "a write-through delete prefix removes older entries of its range only",
			stored: []kvAt{{"/p/d/old", "d/old", 1, 5}, {"/p/dx/y", "dx/y", 1, 6}},
			steps: []replayStep{
				wrotePut("/p/d/new", "d/new", 1, 16),
				wroteDeletePrefix("/p/d/", 14), // its result arrives after a later put's
			},
			want:   map[string]string{"/p/d/new": "d/new v1 @16", "/p/dx/y": "dx/y v1 @6"},
			ranges: 1,
		},
		{
			name:   "a range tombstone is purged when the watch passes it",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps: []replayStep{
				wroteDeletePrefix("/p/d/", 14),
				watched(putEvent("/p/d/x", "d/x", 1, 12)),
				watched(putEvent("/p/d/y", "d/y", 1, 15)),
			},
			want: map[string]string{a: "a1 v1 @5", "/p/d/y": "d/y v1 @15"},
		},
		{
			name:   "after a relist keys absent from its read are gone",
			stored: []kvAt{{a, "a1", 1, 5}, {b, "b1", 1, 6}},
			steps:  []replayStep{relistAt(15, kvAt{a, "a2", 2, 13})},
			want:   map[string]string{a: "a2 v2 @13"},
		},
		{
			name:   "a relist keeps write-through entries newer than its read",
			stored: []kvAt{{a, "a1", 1, 5}, {b, "b1", 1, 6}},
			steps:  []replayStep{wrotePut(c, "c1", 1, 20), wrotePut(b, "b2", 2, 21), relistAt(15, kvAt{a, "a1", 1, 5}, kvAt{b, "b1", 1, 6})},
			want:   map[string]string{a: "a1 v1 @5", b: "b2 v2 @21", c: "c1 v1 @20"},
		},
		{
			name:   "a relist drops write-through entries older than its read",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{wrotePut(d, "d1", 1, 12), relistAt(15, kvAt{a, "a1", 1, 5})},
			want:   map[string]string{a: "a1 v1 @5"},
		},
		{
			name:       "a relist honours tombstones newer than its read",
			stored:     []kvAt{{a, "a1", 1, 5}, {"/p/d/x", "d/x", 1, 6}},
			steps:      []replayStep{wroteDelete(a, 20), wroteDeletePrefix("/p/d/", 21), relistAt(15, kvAt{a, "a1", 1, 5}, kvAt{"/p/d/x", "d/x", 1, 6})},
			want:       map[string]string{},
			tombstones: []string{a},
			ranges:     1,
		},
		{
			name:   "a relist purges the tombstones its read passed",
			stored: []kvAt{{a, "a1", 1, 5}},
			steps:  []replayStep{wroteDelete(a, 12), wroteDeletePrefix("/p/d/", 13), relistAt(15, kvAt{b, "b1", 1, 14})},
			want:   map[string]string{b: "b1 v1 @14"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, tt.stored...)
			for _, s := range tt.steps {
				s(t, c)
			}
			require.Equal(t, tt.want, contentsOf(t, c))
			keys, ranges := tombstonesOf(c)
			require.Equal(t, tt.tombstones, keys, "tombstones")
			require.Equal(t, tt.ranges, ranges, "range tombstones")
		})
	}
}

func TestCacheWriteThroughBeforeStartIsIgnored(t *testing.T) {
	c := &cache[*testItem]{prefix: "/p/", keyOf: func(v *testItem) string { return "/p/" + v.Name }, w: new(watcher)}
	c.writePut("/p/a", testItemBytes("a"), 1, 12)
	c.writeDelete("/p/b", false, 13)
	c.writeDelete("/p/d/", true, 14)
	require.NoError(t, c.reset(context.Background(), storedKVs([]kvAt{{"/p/b", "b1", 1, 5}}), startRev))
	require.Equal(t, map[string]string{"/p/b": "b1 v1 @5"}, contentsOf(t, c))
	keys, ranges := tombstonesOf(c)
	require.Empty(t, keys)
	require.Zero(t, ranges)
}

func TestCacheAnswersChangedUndecodableBytesWithTheDecodeError(t *testing.T) {
	c := newTestCache(t, kvAt{"/p/a", "a1", 1, 5})
	bad := &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte("/p/a"), Value: []byte("{not json"), Version: 2, ModRevision: 12}}
	require.NoError(t, c.apply(context.Background(), []*clientv3.Event{bad}))

	v, err := c.Get("/p/a").Exec(context.Background())
	require.ErrorContains(t, err, `failed to decode "/p/a"`)
	require.Nil(t, v)
	vs, err := c.GetPrefix("").Exec(context.Background())
	require.ErrorContains(t, err, `failed to decode "/p/a"`)
	require.Nil(t, vs)
}
