package storage_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

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
