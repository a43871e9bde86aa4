package storage_test

// The cache's write-through: a cache reads its own writes, and a write
// outranks older events of its watch.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// writeCase is a write through a cache, checked for read-your-writes.
type writeCase struct {
	name   string
	stored int // puts by another writer before the write; 0: the key is absent
	// op builds the write of key; item is the record it writes (nil for a
	// delete by key or prefix), read from the cache when stored > 0.
	op func(c storage.Cache[*record], key string, item *record) storage.TxnOperation
	// version is the key's version after the write; 0 means deleted.
	version int64
}

var writeCases = []writeCase{
	{
		name: "create",
		op: func(c storage.Cache[*record], _ string, item *record) storage.TxnOperation {
			return c.Create(item)
		},
		version: 1,
	},
	{
		name:   "put over another writer's value",
		stored: 3,
		op: func(c storage.Cache[*record], _ string, item *record) storage.TxnOperation {
			item.SetVersion(0) // a put learns the version from etcd
			return c.Put(item)
		},
		version: 4,
	},
	{
		name:   "update",
		stored: 2,
		op: func(c storage.Cache[*record], _ string, item *record) storage.TxnOperation {
			return c.Update(item)
		},
		version: 3,
	},
	{
		name:   "delete by key",
		stored: 1,
		op: func(c storage.Cache[*record], key string, _ *record) storage.TxnOperation {
			return c.DeleteByKey(key)
		},
	},
	{
		name:   "delete value",
		stored: 2,
		op: func(c storage.Cache[*record], _ string, item *record) storage.TxnOperation {
			return c.DeleteValue(item)
		},
	},
	{
		name:   "delete prefix",
		stored: 1,
		op: func(c storage.Cache[*record], key string, _ *record) storage.TxnOperation {
			return c.DeletePrefix(strings.TrimSuffix(key, "/x"))
		},
	},
}

// prepareWrite stores w's key as another writer would, waits until the cache
// has it, and returns the key and the record the write will use.
func prepareWrite(ctx context.Context, t *testing.T, client *clientv3.Client, c storage.Cache[*record], mode string, w writeCase) (string, *record) {
	t.Helper()
	name := strings.ReplaceAll(fmt.Sprintf("rw/%s/%s/x", mode, w.name), " ", "-")
	key := storage.Key(name)
	if w.stored == 0 {
		return key, &record{Name: name, Count: 100}
	}
	for i := range w.stored {
		require.NoError(t, storage.NewPutOp(client, key, &record{Name: name, Count: i}).Exec(ctx))
	}
	var item *record
	require.Eventually(t, func() bool {
		var err error
		item, err = c.Get(key).Exec(ctx)
		return err == nil && item.Version() == int64(w.stored)
	}, waitTimeout, pollInterval)
	item.Count = 100
	return key, item
}

// requireWritten checks, without waiting, that the cache and etcd hold the
// result of write w of key at revision rev, and that a put wrote the key's
// version and mod revision back into item.
func requireWritten(ctx context.Context, t *testing.T, client *clientv3.Client, c storage.Cache[*record], w writeCase, key string, item *record, rev int64) {
	t.Helper()
	got, err := c.Get(key).Exec(ctx)
	if w.version == 0 {
		require.ErrorIs(t, err, storage.ErrNotFound, "the cache still holds the deleted key")
		_, err = storage.NewGetOp[*record](client, key).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrNotFound, "etcd still holds the deleted key")
		return
	}
	require.NoError(t, err)
	require.Equal(t, 100, got.Count)
	require.Equal(t, w.version, got.Version(), "version in the cache")
	require.Equal(t, rev, got.ModRevision(), "mod revision in the cache")
	require.Equal(t, w.version, item.Version(), "version written back into the item")
	require.Equal(t, rev, item.ModRevision(), "mod revision written back into the item")
	stored, err := storage.NewGetOp[*record](client, key).Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, stored, got, "the cache differs from etcd")
}

// streamGate holds back the watch responses of the client it is installed in
// (as a stream interceptor) while it is held. Requests still go through, so
// what a cache shows while its watch is held is its write-through alone.
type streamGate struct {
	mu     sync.Mutex    // protects the fields below
	open   chan struct{} // closed while the gate lets responses through
	wake   chan struct{} // closed and replaced when passUntil changes
	until  string        // while held, responses pass up to the first with an event on this key
	passed chan struct{} // closed once the response with an event on until passed
}

func newStreamGate() *streamGate {
	g := &streamGate{open: make(chan struct{}), wake: make(chan struct{})}
	close(g.open)
	return g
}

// dialOption installs the gate in a client.
func (g *streamGate) dialOption() grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
		method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Watch/Watch" {
			return s, err
		}
		return &gatedStream{ClientStream: s, gate: g}, nil
	})
}

// hold keeps every watch response from now on until release.
func (g *streamGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
	default: // already held
	}
}

// release lets the held responses and all later ones through.
func (g *streamGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

// passUntil lets held responses through, in the stream's order, up to and
// including the first one with an event on key, and holds the rest. Responses
// held before it (a late event of an earlier write, a progress notification)
// pass too: they precede key's change in the stream, so no later change
// passes with them.
func (g *streamGate) passUntil(t *testing.T, key string) {
	t.Helper()
	g.mu.Lock()
	g.until, g.passed = key, make(chan struct{})
	passed := g.passed
	close(g.wake)
	g.wake = make(chan struct{})
	g.mu.Unlock()
	select {
	case <-passed:
	case <-time.After(waitTimeout):
		t.Fatalf("no watch response with an event on %s arrived", key)
	}
}

// admit reports whether the response m may pass now, and else a channel that
// is closed when that may have changed.
func (g *streamGate) admit(m any) (bool, <-chan struct{}, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		return true, nil, nil
	default:
	}
	if g.until == "" {
		return false, g.open, g.wake
	}
	if resp, ok := m.(*etcdserverpb.WatchResponse); ok {
		for _, ev := range resp.Events {
			if string(ev.Kv.Key) == g.until {
				g.until = ""
				close(g.passed)
				break
			}
		}
	}
	return true, nil, nil
}

// gatedStream is a watch stream whose responses wait for the gate.
type gatedStream struct {
	grpc.ClientStream
	gate *streamGate
}

func (s *gatedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	for {
		ok, open, wake := s.gate.admit(m)
		if ok {
			return err
		}
		select {
		case <-open:
		case <-wake:
		case <-s.Context().Done(): // the watch was cancelled: nothing waits
			return err
		}
	}
}

// newGatedClient returns a client of s whose watch responses g holds.
func newGatedClient(t *testing.T, s *storagetest.Server, g *streamGate) *clientv3.Client {
	t.Helper()
	t.Cleanup(g.release) // runs after the client is closed and the cache stopped
	return newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second, DialOptions: []grpc.DialOption{g.dialOption()}})
}

func TestCacheReadsItsOwnWrites(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	client := s.Client() // another writer
	ctx := testContext(t)
	// The cache's watch is held during each write: what the cache shows
	// then, it learned from the write itself.
	gate := newStreamGate()
	c := startCache(ctx, t, newGatedClient(t, s, gate), "/rw", keyOfRecord)

	t.Run("alone", func(t *testing.T) {
		for _, w := range writeCases {
			t.Run(w.name+" is visible at once after Exec", func(t *testing.T) {
				key, item := prepareWrite(ctx, t, client, c, "alone", w)
				op := w.op(c, key, item)
				gate.hold()
				defer gate.release()
				require.NoError(t, execWrite(ctx, t, op))
				requireWritten(ctx, t, client, c, w, key, item, op.Revision())
			})
		}
		requireCacheMatchesEtcd(ctx, t, c, client, "/rw")
	})

	t.Run("in a txn, every op is visible at once after Commit", func(t *testing.T) {
		keys := make([]string, len(writeCases))
		items := make([]*record, len(writeCases))
		ops := make([]storage.TxnOperation, len(writeCases))
		for i, w := range writeCases {
			keys[i], items[i] = prepareWrite(ctx, t, client, c, "txn", w)
			ops[i] = w.op(c, keys[i], items[i])
		}
		gate.hold()
		require.NoError(t, storage.NewTxn(client, ops...).Commit(ctx))
		for i, w := range writeCases {
			t.Run(w.name, func(t *testing.T) {
				requireWritten(ctx, t, client, c, w, keys[i], items[i], ops[0].Revision())
			})
		}
		gate.release()
		requireCacheMatchesEtcd(ctx, t, c, client, "/rw")
	})

	t.Run("a failed txn leaves the cache unchanged", func(t *testing.T) {
		a, b, existing := &record{Name: "rw/fail/a", Count: 1}, &record{Name: "rw/fail/b", Count: 1}, &record{Name: "rw/fail/c", Count: 1}
		for _, r := range []*record{a, b, existing} {
			require.NoError(t, c.Put(r).Exec(ctx))
		}
		before, err := c.GetPrefix("/rw/fail").Exec(ctx)
		require.NoError(t, err)
		require.Len(t, before, 3)

		err = storage.NewTxn(client,
			c.Put(&record{Name: "rw/fail/a", Count: 2}),
			c.DeleteByKey("/rw/fail/b"),
			c.Create(&record{Name: "rw/fail/c", Count: 2}),
			c.Create(&record{Name: "rw/fail/d", Count: 2}),
		).Commit(ctx)
		require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
		require.ErrorIs(t, err, storage.ErrAlreadyExists)

		after, err := c.GetPrefix("/rw/fail").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, before, after)
		stored, err := storage.NewGetPrefixOp[*record](client, "/rw/fail").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, before, stored)
	})
}

func TestCacheWriteThroughOutranksOlderWatchEvents(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	client := s.Client() // another writer
	ctx := testContext(t)
	gate := newStreamGate()
	c := startCache(ctx, t, newGatedClient(t, s, gate), "/ord", keyOfHost)
	put(t, client, "/ord/e", rawHostJSON("ord/e", 1))
	put(t, client, "/ord/warm", rawHostJSON("ord/warm", 1)) // the watch delivers
	requireCacheMatchesEtcd(ctx, t, c, client, "/ord")

	tests := []struct {
		name  string
		key   string
		stale clientv3.Op // another writer's change, before the cache's write
		write storage.TxnOperation
		want  *host // nil: the key is absent
	}{
		{
			name:  "an older watched put never overwrites a newer cache put",
			key:   "/ord/a",
			stale: clientv3.OpPut("/ord/a", rawHostJSON("ord/a", 1)),
			write: c.Put(&host{Name: "ord/a", Port: 2}),
			want:  hostWithVersion("ord/a", 2, 2),
		},
		{
			name:  "an older watched put never brings back a key the cache deleted",
			key:   "/ord/b",
			stale: clientv3.OpPut("/ord/b", rawHostJSON("ord/b", 1)),
			write: c.DeleteByKey("/ord/b"),
		},
		{
			name:  "an older watched put never brings back a key under a prefix the cache deleted",
			key:   "/ord/d/x",
			stale: clientv3.OpPut("/ord/d/x", rawHostJSON("ord/d/x", 1)),
			write: c.DeletePrefix("/ord/d"),
		},
		{
			name:  "an older watched delete never removes a key the cache created",
			key:   "/ord/e",
			stale: clientv3.OpDelete("/ord/e"),
			write: c.Create(&host{Name: "ord/e", Port: 3}),
			want:  hostWithVersion("ord/e", 3, 1),
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireHolds := func(t *testing.T, when string) {
				t.Helper()
				got, err := c.Get(tt.key).Exec(ctx)
				if tt.want == nil {
					require.ErrorIs(t, err, storage.ErrNotFound, when)
					return
				}
				require.NoError(t, err, when)
				require.Equal(t, tt.want, got, when)
			}
			marker := fmt.Sprintf("/ord/marker/%d", i)

			gate.hold()
			defer gate.release()
			// The stale change and a marker share one revision, so one
			// watch response: once the marker is in, so is the change.
			_, err := client.Txn(ctx).Then(tt.stale, clientv3.OpPut(marker, rawHostJSON(marker[1:], 1))).Commit()
			require.NoError(t, err)
			require.NoError(t, execWrite(ctx, t, tt.write))
			requireHolds(t, "after the write")

			gate.passUntil(t, marker) // up to the stale change's response, not the write's
			require.Eventually(t, func() bool {
				_, err := c.Get(marker).Exec(ctx)
				return err == nil
			}, waitTimeout, pollInterval)
			requireHolds(t, "after the older watch event")

			gate.release()
			requireCacheMatchesEtcd(ctx, t, c, client, "/ord")
			requireHolds(t, "after the watch caught up")
		})
	}
}

// sticky is a Value that keeps the version it was made with, ignoring
// SetVersion: the cache must not trust a Value's Version for its own
// bookkeeping.
type sticky struct {
	ID string `json:"id"`
}

func (*sticky) Version() int64   { return -1 }
func (*sticky) SetVersion(int64) {}

func TestCacheWritesOfAValueWithAnyVersionKeepTheCacheOrdered(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	// The watch is held: what the cache shows, it holds from the writes.
	gate := newStreamGate()
	c := startCache(ctx, t, newGatedClient(t, s, gate), "/sticky", func(v *sticky) string { return "/sticky/" + v.ID })
	gate.hold()
	defer gate.release()
	for _, id := range []string{"b", "a", "c"} {
		require.NoError(t, c.Put(&sticky{ID: id}).Exec(ctx))
	}
	got, err := c.GetPrefix("/sticky/").Exec(ctx)
	require.NoError(t, err)
	var ids []string
	for _, v := range got {
		ids = append(ids, v.ID)
	}
	require.Equal(t, []string{"a", "b", "c"}, ids, "every write is held, in key order")
	for _, id := range ids {
		v, err := c.Get("/sticky/" + id).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, id, v.ID)
	}
}
