package storage_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// keyOfHost is the cache key of a host: its name is its key below the root.
func keyOfHost(h *host) string { return storage.Key(h.Name) }

// keyOfRecord is the cache key of a record, like keyOfHost.
func keyOfRecord(r *record) string { return storage.Key(r.Name) }

// rawHostJSON is the stored form of a host, for writers that bypass the library.
func rawHostJSON(name string, port int) string {
	return fmt.Sprintf(`{"name":%q,"port":%d}`, name, port)
}

// startCache starts a cache of prefix under ctx and stops it when the test
// ends (before the etcd of the test is closed).
func startCache[V storage.Value](ctx context.Context, t *testing.T, client *clientv3.Client, prefix string, key func(V) string) storage.Cache[V] {
	t.Helper()
	c := storage.NewCache(client, prefix, key)
	require.NoError(t, c.Start(ctx))
	t.Cleanup(c.Stop)
	return c
}

// newExtraClient returns another client of s, closed when the test ends.
func newExtraClient(t *testing.T, s *storagetest.Server, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	client, err := s.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() }) // a test may have closed it already
	return client
}

// execWrite runs a write op alone, whatever its Exec returns besides the error.
func execWrite(ctx context.Context, t *testing.T, op storage.TxnOperation) error {
	t.Helper()
	switch op := op.(type) {
	case interface{ Exec(context.Context) error }:
		return op.Exec(ctx)
	case interface {
		Exec(context.Context) (int64, error)
	}:
		_, err := op.Exec(ctx)
		return err
	}
	t.Fatalf("%T has no Exec", op)
	return nil
}

// requireCacheMatchesEtcd waits until the cache's whole contents equal a
// fresh read of its prefix from etcd: keys, values and versions.
func requireCacheMatchesEtcd[V storage.Value](ctx context.Context, t *testing.T, c storage.Cache[V], client *clientv3.Client, prefix string) {
	t.Helper()
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		want, err := storage.NewGetPrefixOp[V](client, prefix).Exec(ctx)
		require.NoError(ct, err)
		got, err := c.GetPrefix("").Exec(ctx)
		require.NoError(ct, err)
		require.Equal(ct, want, got)
	}, 3*waitTimeout, 20*time.Millisecond)
}

// hostReader is what a read test needs: NewGetOp and NewGetPrefixOp on etcd, and
// a started cache, answer it alike.
type hostReader interface {
	Get(key string) storage.GetOp[*host]
	GetPrefix(prefix string) storage.GetMultipleOp[*host]
}

// etcdHostReader reads from etcd.
type etcdHostReader struct{ client *clientv3.Client }

func (r etcdHostReader) Get(key string) storage.GetOp[*host] {
	return storage.NewGetOp[*host](r.client, key)
}

func (r etcdHostReader) GetPrefix(prefix string) storage.GetMultipleOp[*host] {
	return storage.NewGetPrefixOp[*host](r.client, prefix)
}

var _ hostReader = storage.Cache[*host](nil)

func TestCacheReadsAnswerAsEtcdReads(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)

	t.Log("phase 1: data the cache's first read finds")
	put(t, client, "/c/a/1", rawHostJSON("c/a/1", 11))
	put(t, client, "/c/b/2", rawHostJSON("c/b/2", 22))
	put(t, client, "/c/bad/json", "{not json")
	put(t, client, "/cx/1", rawHostJSON("cx/1", 1)) // beside the prefix, never read
	c := startCache(ctx, t, client, "/c", keyOfHost)

	t.Log("phase 2: data the cache's watch delivers")
	put(t, client, "/c/a/1", rawHostJSON("c/a/1", 12))
	put(t, client, "/c/a/1", rawHostJSON("c/a/1", 13))
	put(t, client, "/c/a/2", rawHostJSON("c/a/2", 12))
	put(t, client, "/c/ab/1", rawHostJSON("c/ab/1", 21))
	put(t, client, "/c/a", rawHostJSON("c/a", 1))
	put(t, client, "/c/b/1", rawHostJSON("c/b/1", 21))
	put(t, client, "/c/bad/null", "null")
	// The watch delivers in revision order: once the last write is in, so
	// is every write before it.
	put(t, client, "/c/zz/last", rawHostJSON("c/zz/last", 1))
	require.Eventually(t, func() bool {
		_, err := c.Get("/c/zz/last").Exec(ctx)
		return err == nil
	}, waitTimeout, pollInterval)

	for _, r := range []struct {
		name string
		r    hostReader
	}{
		{"etcd", etcdHostReader{client}},
		{"cache", c},
	} {
		t.Run(r.name, func(t *testing.T) { testCacheReads(ctx, t, r.r) })
	}
}

// testCacheReads is the one body of the read tests, run against etcd and against
// the cache.
func testCacheReads(ctx context.Context, t *testing.T, r hostReader) {
	t.Run("get", func(t *testing.T) {
		tests := []struct {
			name    string
			key     string
			want    *host
			wantIs  error
			wantErr string
		}{
			{name: "an existing key gives its value and version", key: "/c/a/1", want: hostWithVersion("c/a/1", 13, 3)},
			{name: "a key that is also a prefix gives its own value", key: "/c/a", want: hostWithVersion("c/a", 1, 1)},
			{name: "a missing key wraps ErrNotFound and names the key", key: "/c/missing", wantIs: storage.ErrNotFound, wantErr: "/c/missing"},
			{name: "undecodable bytes give the decode error naming the key", key: "/c/bad/json", wantErr: `failed to decode "/c/bad/json"`},
			{name: "JSON null gives the decode error naming the key", key: "/c/bad/null", wantErr: `failed to decode "/c/bad/null"`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := r.Get(tt.key).Exec(ctx)
				if tt.wantErr == "" {
					require.NoError(t, err)
					require.Equal(t, tt.want, got)
					return
				}
				require.ErrorContains(t, err, tt.wantErr)
				if tt.wantIs != nil {
					require.ErrorIs(t, err, tt.wantIs)
				}
				require.Nil(t, got)
			})
		}
	})
	t.Run("get prefix", func(t *testing.T) {
		tests := []struct {
			name    string
			prefix  string
			want    []*host
			wantErr string
		}{
			{
				name:   "values come in key order",
				prefix: "/c/b/",
				want:   []*host{hostWithVersion("c/b/1", 21, 1), hostWithVersion("c/b/2", 22, 1)},
			},
			{
				name:   "a prefix without its slash stops at the boundary",
				prefix: "/c/a",
				want:   []*host{hostWithVersion("c/a/1", 13, 3), hostWithVersion("c/a/2", 12, 1)},
			},
			{
				name:   "a prefix with its slash reads the same",
				prefix: "/c/a/",
				want:   []*host{hostWithVersion("c/a/1", 13, 3), hostWithVersion("c/a/2", 12, 1)},
			},
			{name: "a prefix of nothing gives no values and no error", prefix: "/c/none"},
			{name: "a key is no prefix of itself", prefix: "/c/a/1"},
			{name: "undecodable bytes give the decode error naming the key", prefix: "/c/bad", wantErr: `failed to decode "/c/bad/json"`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := r.GetPrefix(tt.prefix).Exec(ctx)
				if tt.wantErr != "" {
					require.ErrorContains(t, err, tt.wantErr)
					require.Nil(t, got)
					return
				}
				require.NoError(t, err)
				if len(tt.want) == 0 {
					require.Empty(t, got)
					return
				}
				require.Equal(t, tt.want, got)
			})
		}
	})
}

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
	step chan struct{} // each receive lets one held response through; never closed

	mu   sync.Mutex    // protects open
	open chan struct{} // closed while the gate lets responses through
}

func newStreamGate() *streamGate {
	g := &streamGate{open: make(chan struct{}), step: make(chan struct{})}
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

// next lets exactly one held response through.
func (g *streamGate) next(t *testing.T) {
	t.Helper()
	select {
	case g.step <- struct{}{}:
	case <-time.After(waitTimeout):
		t.Fatal("no held watch response to let through")
	}
}

func (g *streamGate) opened() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// gatedStream is a watch stream whose responses wait for the gate.
type gatedStream struct {
	grpc.ClientStream
	gate *streamGate
}

func (s *gatedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	select {
	case <-s.gate.opened():
	case <-s.gate.step:
	case <-s.Context().Done(): // the watch was cancelled: nothing waits
	}
	return err
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

			gate.next(t) // the stale change's response only
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

func TestCacheReadsReturnFreshInstances(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	c := startCache(ctx, t, client, "/fresh", keyOfHost)

	item := &host{Name: "fresh/a", Port: 1}
	require.NoError(t, c.Put(item).Exec(ctx))
	require.NoError(t, c.Put(&host{Name: "fresh/b", Port: 2}).Exec(ctx))
	want := []*host{hostWithVersion("fresh/a", 1, 1), hostWithVersion("fresh/b", 2, 1)}

	tests := []struct {
		name   string
		mutate func(t *testing.T)
	}{
		{"mutating the item after its put", func(*testing.T) {
			item.Port = 99
			item.SetVersion(99)
		}},
		{"mutating a value from Get", func(t *testing.T) {
			got, err := c.Get("/fresh/a").Exec(ctx)
			require.NoError(t, err)
			got.Port = 99
			got.SetVersion(99)
		}},
		{"mutating values from GetPrefix", func(t *testing.T) {
			got, err := c.GetPrefix("").Exec(ctx)
			require.NoError(t, err)
			for _, h := range got {
				h.Port = 99
				h.SetVersion(99)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" never changes the cache", func(t *testing.T) {
			tt.mutate(t)
			got, err := c.GetPrefix("").Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, want, got)
			a, err := c.Get("/fresh/a").Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, want[0], a)
		})
	}

	t.Run("two reads never share an instance", func(t *testing.T) {
		first, err := c.Get("/fresh/a").Exec(ctx)
		require.NoError(t, err)
		second, err := c.Get("/fresh/a").Exec(ctx)
		require.NoError(t, err)
		require.NotSame(t, first, second)
		all, err := c.GetPrefix("").Exec(ctx)
		require.NoError(t, err)
		require.NotSame(t, first, all[0])
	})
}

func TestCacheKeysOutsideItsPrefix(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	put(t, client, "/out/x", rawHostJSON("out/x", 1))
	put(t, client, "/inx/y", rawHostJSON("inx/y", 1)) // shares the prefix's letters, not its slash
	put(t, client, "/in", rawHostJSON("in", 1))
	c := startCache(ctx, t, client, "/in", keyOfHost)
	require.NoError(t, c.Put(&host{Name: "in/a", Port: 1}).Exec(ctx))
	require.NoError(t, c.Put(&host{Name: "in/b/1", Port: 2}).Exec(ctx))
	all := []*host{hostWithVersion("in/a", 1, 1), hostWithVersion("in/b/1", 2, 1)}

	requireUnchanged := func(t *testing.T) {
		t.Helper()
		got, err := c.GetPrefix("").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, all, got, "the cache changed")
		for _, key := range []string{"/out/x", "/inx/y", "/in"} {
			exists, err := storage.NewExistsOp(client, key).Exec(ctx)
			require.NoError(t, err)
			require.True(t, exists, "%s was deleted", key)
		}
	}

	t.Run("GetPrefix of the empty prefix reads every item and nothing else", func(t *testing.T) {
		got, err := c.GetPrefix("").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, all, got)
	})
	t.Run("GetPrefix of an outside prefix fails naming it", func(t *testing.T) {
		for _, prefix := range []string{"/out", "/inx/", "/"} {
			got, err := c.GetPrefix(prefix).Exec(ctx)
			require.ErrorContains(t, err, prefix)
			require.Nil(t, got)
		}
	})
	t.Run("Get of an outside key wraps ErrNotFound naming the key", func(t *testing.T) {
		for _, key := range []string{"/out/x", "/inx/y", "/in"} {
			got, err := c.Get(key).Exec(ctx)
			require.ErrorIs(t, err, storage.ErrNotFound)
			require.ErrorContains(t, err, key)
			require.Nil(t, got)
		}
	})

	writes := []struct {
		name string
		key  string // named by the error
		op   storage.TxnOperation
	}{
		{"put of an item outside fails naming its key", "/out/new", c.Put(&host{Name: "out/new"})},
		{"create of an item outside fails naming its key", "/out/new", c.Create(&host{Name: "out/new"})},
		{"update of an item outside fails naming its key", "/out/x", c.Update(hostWithVersion("out/x", 2, 1))},
		{"delete value of an item outside fails naming its key", "/out/x", c.DeleteValue(hostWithVersion("out/x", 1, 1))},
		{"delete prefix outside fails naming it", "/out/", c.DeletePrefix("/out")},
		{"delete of the empty prefix is refused", `""`, c.DeletePrefix("")},
		{"delete of the root prefix is refused", `"/"`, c.DeletePrefix("/")},
	}
	for _, tt := range writes {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorContains(t, execWrite(ctx, t, tt.op), tt.key)
			requireUnchanged(t)
			exists, err := storage.NewExistsOp(client, "/out/new").Exec(ctx)
			require.NoError(t, err)
			require.False(t, exists, "an outside item was written")
		})
	}

	t.Run("delete by key outside deletes in etcd and leaves the cache alone", func(t *testing.T) {
		n, err := c.DeleteByKey("/out/x").Exec(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 1, n)
		exists, err := storage.NewExistsOp(client, "/out/x").Exec(ctx)
		require.NoError(t, err)
		require.False(t, exists)
		got, err := c.GetPrefix("").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, all, got)
	})
}

func TestCacheOfTheWholeKeyspaceReadsEveryItem(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	put(t, client, "/a/1", rawHostJSON("a/1", 1))
	c := startCache(ctx, t, client, "", keyOfHost)
	require.NoError(t, c.Put(&host{Name: "b", Port: 2}).Exec(ctx))
	want := []*host{hostWithVersion("a/1", 1, 1), hostWithVersion("b", 2, 1)}

	got, err := c.GetPrefix("").Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, want, got, "GetPrefix(\"\") of a cache of the whole keyspace")
	stored, err := storage.NewGetPrefixOp[*host](client, "").Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, stored, got)
	got, err = c.GetPrefix("/a").Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, want[:1], got)
}

func TestCacheSeesExternalWriters(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	other := newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second})
	ctx := testContext(t)
	c := startCache(ctx, t, s.Client(), "/ext", keyOfHost)

	eventually := func(t *testing.T, key string, want *host) {
		t.Helper()
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			got, err := c.Get(key).Exec(ctx)
			if want == nil {
				require.ErrorIs(ct, err, storage.ErrNotFound)
				return
			}
			require.NoError(ct, err)
			require.Equal(ct, want, got)
		}, waitTimeout, pollInterval)
	}
	raw := func(t *testing.T, key, value string) {
		t.Helper()
		_, err := other.Put(ctx, key, value)
		require.NoError(t, err)
	}

	t.Run("a put is seen with its version", func(t *testing.T) {
		raw(t, "/ext/a", rawHostJSON("ext/a", 1))
		eventually(t, "/ext/a", hostWithVersion("ext/a", 1, 1))
		raw(t, "/ext/a", rawHostJSON("ext/a", 2))
		eventually(t, "/ext/a", hostWithVersion("ext/a", 2, 2))
	})
	t.Run("a delete is seen", func(t *testing.T) {
		_, err := other.Delete(ctx, "/ext/a")
		require.NoError(t, err)
		eventually(t, "/ext/a", nil)
	})
	t.Run("a re-created key is seen at version 1", func(t *testing.T) {
		raw(t, "/ext/a", rawHostJSON("ext/a", 3))
		eventually(t, "/ext/a", hostWithVersion("ext/a", 3, 1))
	})
	t.Run("a prefix delete is seen", func(t *testing.T) {
		raw(t, "/ext/d/1", rawHostJSON("ext/d/1", 1))
		raw(t, "/ext/d/2", rawHostJSON("ext/d/2", 1))
		eventually(t, "/ext/d/2", hostWithVersion("ext/d/2", 1, 1))
		_, err := other.Delete(ctx, "/ext/d/", clientv3.WithPrefix())
		require.NoError(t, err)
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			got, err := c.GetPrefix("/ext/d").Exec(ctx)
			require.NoError(ct, err)
			require.Empty(ct, got)
		}, waitTimeout, pollInterval)
		got, err := c.GetPrefix("").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, []*host{hostWithVersion("ext/a", 3, 1)}, got)
	})
}

func TestCacheLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	put(t, client, "/life/a", rawHostJSON("life/a", 1))

	requireNotReadable := func(t *testing.T, c storage.Cache[*host]) {
		t.Helper()
		got, err := c.Get("/life/a").Exec(ctx)
		require.Error(t, err)
		require.NotErrorIs(t, err, storage.ErrNotFound)
		require.Nil(t, got)
		all, err := c.GetPrefix("").Exec(ctx)
		require.Error(t, err)
		require.Nil(t, all)
	}

	t.Run("reads and writes before Start fail, and not with ErrNotFound", func(t *testing.T) {
		c := storage.NewCache(client, "/life", keyOfHost)
		requireNotReadable(t, c)
		require.Error(t, c.Put(&host{Name: "life/before"}).Exec(ctx))
		exists, err := storage.NewExistsOp(client, "/life/before").Exec(ctx)
		require.NoError(t, err)
		require.False(t, exists)
	})

	t.Run("a second Start without Stop fails with ErrWatchAlreadyInProgress", func(t *testing.T) {
		c := startCache(ctx, t, client, "/life", keyOfHost)
		require.ErrorIs(t, c.Start(ctx), storage.ErrWatchAlreadyInProgress)
		_, err := c.Get("/life/a").Exec(ctx)
		require.NoError(t, err, "the failed Start broke the running cache")
	})

	t.Run("Stop empties the cache and Start reloads etcd's current contents", func(t *testing.T) {
		c := startCache(ctx, t, client, "/life", keyOfHost)
		require.NoError(t, c.Put(&host{Name: "life/b", Port: 1}).Exec(ctx))
		c.Stop()
		requireNotReadable(t, c)

		t.Log("while stopped: change /life/b; create and delete /life/c")
		require.NoError(t, storage.NewPutOp(client, "/life/b", &host{Name: "life/b", Port: 2}).Exec(ctx))
		require.NoError(t, storage.NewPutOp(client, "/life/c", &host{Name: "life/c", Port: 3}).Exec(ctx))
		_, err := storage.NewDeleteKeyOp(client, "/life/c").Exec(ctx)
		require.NoError(t, err)

		require.NoError(t, c.Start(ctx))
		got, err := c.GetPrefix("").Exec(ctx) // Start returns after its read: no wait
		require.NoError(t, err)
		require.Equal(t, []*host{hostWithVersion("life/a", 1, 1), hostWithVersion("life/b", 2, 2)}, got)
		_, err = storage.NewDeleteKeyOp(client, "/life/b").Exec(ctx)
		require.NoError(t, err)
	})

	t.Run("Stop is idempotent and safe before Start", func(t *testing.T) {
		c := storage.NewCache(client, "/life", keyOfHost)
		c.Stop()
		c.Stop()
		require.NoError(t, c.Start(ctx))
		got, err := c.Get("/life/a").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, hostWithVersion("life/a", 1, 1), got)
		c.Stop()
		c.Stop()
		requireNotReadable(t, c)
	})

	t.Run("cancelling Start's context sends one error and fails reads with it", func(t *testing.T) {
		startCtx, cancel := context.WithCancel(ctx)
		c := startCache(startCtx, t, client, "/life", keyOfHost)
		cancel()

		err := nextError(t, c.Error())
		t.Logf("Error(): %v", err)
		require.ErrorIs(t, err, context.Canceled)
		_, readErr := c.Get("/life/a").Exec(ctx)
		require.ErrorIs(t, readErr, context.Canceled)
		require.NotErrorIs(t, readErr, storage.ErrNotFound)
		_, readErr = c.GetPrefix("").Exec(ctx)
		require.ErrorIs(t, readErr, context.Canceled)
		requireNoMoreErrors(t, c.Error())

		t.Log("the stopped run counts until Stop; then Start works again")
		require.ErrorIs(t, c.Start(ctx), storage.ErrWatchAlreadyInProgress)
		c.Stop()
		require.NoError(t, c.Start(ctx))
		_, err = c.Get("/life/a").Exec(ctx)
		require.NoError(t, err)
	})
}
