package storage_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

func TestGet(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("reads the value with the key's version", func(t *testing.T) {
		key := storage.Key("get", "k")
		put(t, client, key, `{"name":"a","port":1}`)
		put(t, client, key, `{"name":"b","port":2}`)
		got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, hostWithVersion("b", 2, 2), got)
	})

	t.Run("a missing key fails with ErrNotFound naming the key", func(t *testing.T) {
		key := storage.Key("get", "missing")
		got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrNotFound)
		require.ErrorContains(t, err, key)
		require.Nil(t, got)
	})

	t.Run("a deleted key fails with ErrNotFound", func(t *testing.T) {
		key := storage.Key("get", "deleted")
		put(t, client, key, "{}")
		_, err := storage.NewDeleteKeyOp(client, key).Exec(ctx)
		require.NoError(t, err)
		got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrNotFound)
		require.Nil(t, got)
	})

	t.Run("keys are used verbatim", func(t *testing.T) {
		put(t, client, "get-no-slash", `{"name":"verbatim"}`)
		got, err := storage.NewGetOp[*host](client, "get-no-slash").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, "verbatim", got.Name)
		_, err = storage.NewGetOp[*host](client, "/get-no-slash").Exec(ctx)
		require.ErrorIs(t, err, storage.ErrNotFound)
	})

	t.Run("WithRev reads the value as it was", func(t *testing.T) {
		key := storage.Key("get", "rev")
		rev := put(t, client, key, `{"name":"old"}`)
		put(t, client, key, `{"name":"new"}`)
		got, err := storage.NewGetOp[*host](client, key, clientv3.WithRev(rev)).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, hostWithVersion("old", 0, 1), got)
	})
}

func TestExists(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	put(t, client, "/e/k", "{}")
	put(t, client, "/e/undecodable", "not json")
	cases := []struct {
		key  string
		want bool
	}{
		{"/e/k", true},
		{"/e/undecodable", true},
		{"/e/missing", false},
		{"/e", false},
		{"/e/k/child", false},
	}
	for _, tc := range cases {
		ok, err := storage.NewExistsOp(client, tc.key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, tc.want, ok, "exists %s", tc.key)
	}
}

func TestGetPrefix(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)
	for _, name := range []string{"c", "a", "b/x", "b"} {
		require.NoError(t, storage.NewPutOp(client, storage.Key("gp", name), &host{Name: name}).Exec(ctx))
	}
	require.NoError(t, storage.NewPutOp(client, "/other", &host{Name: "other"}).Exec(ctx))

	t.Run("returns the values below the prefix in key order", func(t *testing.T) {
		got, err := storage.NewGetPrefixOp[*host](client, storage.Prefix("gp")).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, []*host{
			hostWithVersion("a", 0, 1), hostWithVersion("b", 0, 1),
			hostWithVersion("b/x", 0, 1), hostWithVersion("c", 0, 1),
		}, got)
	})

	t.Run("an empty result is no error and no values", func(t *testing.T) {
		got, err := storage.NewGetPrefixOp[*host](client, storage.Prefix("none")).Exec(ctx)
		require.NoError(t, err)
		require.Empty(t, got)
	})

	t.Run("the empty prefix reads the whole keyspace", func(t *testing.T) {
		got, err := storage.NewGetPrefixOp[*host](client, "").Exec(ctx)
		require.NoError(t, err)
		require.Len(t, got, 5)
	})

	t.Run("WithRev reads the prefix as it was", func(t *testing.T) {
		rev := currentRevision(t, client)
		require.NoError(t, storage.NewPutOp(client, storage.Key("gp", "d"), &host{Name: "d"}).Exec(ctx))
		got, err := storage.NewGetPrefixOp[*host](client, storage.Prefix("gp"), clientv3.WithRev(rev)).Exec(ctx)
		require.NoError(t, err)
		require.Len(t, got, 4)
	})
}

func TestGetRange(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)
	for _, name := range []string{"d", "b", "a", "c"} {
		require.NoError(t, storage.NewPutOp(client, "/r/"+name, &host{Name: name}).Exec(ctx))
	}

	cases := []struct {
		name       string
		start, end string
		want       []string
	}{
		{"reads [start, end) in key order", "/r/b", "/r/d", []string{"b", "c"}},
		{"an end past the last key reads to it", "/r/c", "/s", []string{"c", "d"}},
		{"a start between keys begins at the next", "/r/a0", "/r/c", []string{"b"}},
		{"an empty range is no error and no values", "/r/b", "/r/b", nil},
		{"a range of missing keys is no error and no values", "/s", "/t", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := storage.NewGetRangeOp[*host](client, tc.start, tc.end).Exec(ctx)
			require.NoError(t, err)
			var names []string
			for _, h := range got {
				require.Equal(t, int64(1), h.Version())
				names = append(names, h.Name)
			}
			require.Equal(t, tc.want, names)
		})
	}
}

// putHosts stores a host named after each key (Port n) with one raw txn.
func putHosts(t *testing.T, client *clientv3.Client, keys []string, port int) int64 {
	t.Helper()
	ops := make([]clientv3.Op, len(keys))
	for i, key := range keys {
		ops[i] = clientv3.OpPut(key, string(mustJSON(t, &host{Name: key, Port: port})))
	}
	resp, err := client.Txn(testContext(t)).Then(ops...).Commit()
	require.NoError(t, err)
	return resp.Header.Revision
}

func numberedKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return keys
}

func TestGetMultiple(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)

	t.Run("values keep the order of the keys given and missing keys are skipped", func(t *testing.T) {
		t.Parallel()
		client := newClient(t)
		for _, name := range []string{"a", "b", "c"} {
			require.NoError(t, storage.NewPutOp(client, storage.Key("gm", name), &host{Name: name}).Exec(ctx))
		}
		keys := []string{"/gm/c", "/gm/missing", "/gm/a", "/gm/b", "/gm/nope"}
		got, err := storage.NewGetMultipleOp[*host](client, keys).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, []*host{hostWithVersion("c", 0, 1), hostWithVersion("a", 0, 1), hostWithVersion("b", 0, 1)}, got)

		got, err = storage.NewGetMultipleOp[*host](client, []string{"/gm/missing"}).Exec(ctx)
		require.NoError(t, err)
		require.Empty(t, got)

		got, err = storage.NewGetMultipleOp[*host](client, nil).Exec(ctx)
		require.NoError(t, err)
		require.Empty(t, got)
	})

	// 300 keys take three chunks of 128; with --max-txn-ops 16 the op halves
	// its chunk until the server accepts it.
	for _, maxTxnOps := range []uint{128, 16} {
		t.Run(fmt.Sprintf("300 keys are read with a server limit of %d ops", maxTxnOps), func(t *testing.T) {
			t.Parallel()
			client := newClient(t, storagetest.WithServerConfig(func(c *embed.Config) { c.MaxTxnOps = maxTxnOps }))
			keys := numberedKeys("/many/", 300)
			for chunk := range slices.Chunk(keys, int(maxTxnOps)) {
				putHosts(t, client, chunk, 7)
			}
			reversed := slices.Clone(keys)
			slices.Reverse(reversed)
			got, err := storage.NewGetMultipleOp[*host](client, reversed).Exec(ctx)
			require.NoError(t, err)
			require.Len(t, got, len(keys))
			for i, h := range got {
				require.Equal(t, hostWithVersion(reversed[i], 7, 1), h)
			}
		})
	}

	t.Run("a caller's WithRev applies to every chunk", func(t *testing.T) {
		t.Parallel()
		client := newClient(t, storagetest.WithServerConfig(func(c *embed.Config) { c.MaxTxnOps = 1024 }))
		keys := numberedKeys("/rev/", 300)
		rev := putHosts(t, client, keys, 1)
		putHosts(t, client, keys, 2)
		got, err := storage.NewGetMultipleOp[*host](client, keys, clientv3.WithRev(rev)).Exec(ctx)
		require.NoError(t, err)
		require.Len(t, got, len(keys))
		for i, h := range got {
			require.Equal(t, hostWithVersion(keys[i], 1, 1), h)
		}
	})

	t.Run("all keys are read at one revision while a writer changes them", func(t *testing.T) {
		t.Parallel()
		// The writer puts all 300 keys in one txn per round, so a read at one
		// revision sees one round; chunks read at different revisions would
		// mix rounds.
		client := newClient(t, storagetest.WithServerConfig(func(c *embed.Config) { c.MaxTxnOps = 1024 }))
		keys := numberedKeys("/one/", 300)
		var (
			mu   sync.Mutex
			revs = []int64{putHosts(t, client, keys, 0)} // revs[round]
		)
		// The writer stops between rounds, never in the middle of one: a
		// round cancelled in flight may have been applied, and seen by a
		// read, without its revision reaching revs.
		var stopping atomic.Bool
		done := make(chan error, 1)
		go func() {
			for round := 1; !stopping.Load(); round++ {
				ops := make([]clientv3.Op, len(keys))
				for i, key := range keys {
					ops[i] = clientv3.OpPut(key, fmt.Sprintf(`{"name":%q,"port":%d}`, key, round))
				}
				resp, err := client.Txn(ctx).Then(ops...).Commit()
				if err != nil {
					done <- err
					return
				}
				mu.Lock()
				revs = append(revs, resp.Header.Revision)
				mu.Unlock()
			}
			done <- nil
		}()

		var reads [][]*host
		rounds := map[int]bool{}
		deadline := time.Now().Add(10 * time.Second)
		for len(reads) < 20 || (len(rounds) < 3 && time.Now().Before(deadline)) {
			got, err := storage.NewGetMultipleOp[*host](client, keys).Exec(ctx)
			require.NoError(t, err)
			require.Len(t, got, len(keys))
			reads = append(reads, got)
			rounds[got[0].Port] = true
		}
		stopping.Store(true)
		require.NoError(t, <-done)
		t.Logf("%d reads saw %d of %d rounds", len(reads), len(rounds), len(revs))

		for _, got := range reads {
			round := got[0].Port
			for i, h := range got {
				require.Equal(t, hostWithVersion(keys[i], round, int64(round+1)), h, "every value is of round %d", round)
			}
			// The same read, done as one range at that round's revision.
			mu.Lock()
			require.Less(t, round, len(revs), "a read saw round %d, which the writer never saw committed", round)
			rev := revs[round]
			mu.Unlock()
			want, err := storage.NewGetPrefixOp[*host](client, "/one/", clientv3.WithRev(rev)).Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, want, got)
		}
	})

	t.Run("a value that cannot be decoded fails naming its key", func(t *testing.T) {
		t.Parallel()
		client := newClient(t)
		put(t, client, "/bad/a", "{}")
		put(t, client, "/bad/b", "{")
		got, err := storage.NewGetMultipleOp[*host](client, []string{"/bad/a", "/bad/b"}).Exec(ctx)
		require.ErrorContains(t, err, `failed to decode "/bad/b"`)
		require.Nil(t, got)
	})
}

// TestReadOptions: options that do not fit a read (a second range, or a read
// that returns no values) are an error naming the op, never a panic.
func TestReadOptions(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)
	put(t, client, "/ro/k", "{}")

	getOne := func(opts ...clientv3.OpOption) func() error {
		return func() error {
			v, err := storage.NewGetOp[*host](client, "/ro/k", opts...).Exec(ctx)
			require.Nil(t, v)
			return err
		}
	}
	getMany := func(op storage.GetMultipleOp[*host]) func() error {
		return func() error {
			vs, err := op.Exec(ctx)
			require.Nil(t, vs)
			return err
		}
	}
	cases := []struct {
		name string
		exec func() error
		want string
	}{
		{"get with a prefix", getOne(clientv3.WithPrefix()), "get /ro/k"},
		{"get with from key", getOne(clientv3.WithFromKey()), "get /ro/k"},
		{"get with a range", getOne(clientv3.WithRange("/ro/z")), "get /ro/k"},
		{"get with prefix and from key", getOne(clientv3.WithPrefix(), clientv3.WithFromKey()), "get /ro/k"},
		{"get with count only", getOne(clientv3.WithCountOnly()), "get /ro/k"},
		{"get with keys only", getOne(clientv3.WithKeysOnly()), "get /ro/k"},
		{"get prefix with a prefix", getMany(storage.NewGetPrefixOp[*host](client, "/ro", clientv3.WithPrefix())), "get prefix /ro/"},
		{"get prefix with from key", getMany(storage.NewGetPrefixOp[*host](client, "/ro", clientv3.WithFromKey())), "get prefix /ro/"},
		{"get prefix with count only", getMany(storage.NewGetPrefixOp[*host](client, "/ro", clientv3.WithCountOnly())), "get prefix /ro/"},
		{"get range with a range", getMany(storage.NewGetRangeOp[*host](client, "/ro/a", "/ro/z", clientv3.WithRange("/zz"))), "get range [/ro/a, /ro/z)"},
		{"get range with keys only", getMany(storage.NewGetRangeOp[*host](client, "/ro/a", "/ro/z", clientv3.WithKeysOnly())), "get range [/ro/a, /ro/z)"},
		{"get multiple with a prefix", getMany(storage.NewGetMultipleOp[*host](client, []string{"/ro/k"}, clientv3.WithPrefix())), "get 1 keys"},
		{"get multiple with count only", getMany(storage.NewGetMultipleOp[*host](client, []string{"/ro/k"}, clientv3.WithCountOnly())), "get 1 keys"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { err = tc.exec() })
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "invalid option")
		})
	}
}

// TestContextErrors: every op returns its context's error, wrapped so that
// errors.Is finds it, and naming the op's key.
func TestContextErrors(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	put(t, client, "/ctx/k", `{"name":"a"}`)
	stored := hostWithVersion("a", 0, 1)

	cases := []struct {
		name string
		exec func(ctx context.Context) error
		key  string
	}{
		{"put", func(ctx context.Context) error {
			return storage.NewPutOp(client, "/ctx/put", &host{}).Exec(ctx)
		}, "/ctx/put"},
		{"put with a TTL", func(ctx context.Context) error {
			return storage.NewPutOp(client, "/ctx/ttl", &host{}).WithTTL(time.Second).Exec(ctx)
		}, "/ctx/ttl"},
		{"create", func(ctx context.Context) error {
			return storage.NewCreateOp(client, "/ctx/create", &host{}).Exec(ctx)
		}, "/ctx/create"},
		{"update", func(ctx context.Context) error {
			return storage.NewUpdateOp(client, "/ctx/k", stored).Exec(ctx)
		}, "/ctx/k"},
		{"get", func(ctx context.Context) error {
			v, err := storage.NewGetOp[*host](client, "/ctx/k").Exec(ctx)
			require.Nil(t, v)
			return err
		}, "/ctx/k"},
		{"get multiple", func(ctx context.Context) error {
			vs, err := storage.NewGetMultipleOp[*host](client, []string{"/ctx/k"}).Exec(ctx)
			require.Nil(t, vs)
			return err
		}, "/ctx/k"},
		{"get prefix", func(ctx context.Context) error {
			vs, err := storage.NewGetPrefixOp[*host](client, "/ctx").Exec(ctx)
			require.Nil(t, vs)
			return err
		}, "/ctx/"},
		{"get range", func(ctx context.Context) error {
			vs, err := storage.NewGetRangeOp[*host](client, "/ctx/a", "/ctx/z").Exec(ctx)
			require.Nil(t, vs)
			return err
		}, "/ctx/a"},
		{"exists", func(ctx context.Context) error {
			_, err := storage.NewExistsOp(client, "/ctx/k").Exec(ctx)
			return err
		}, "/ctx/k"},
		{"delete key", func(ctx context.Context) error {
			_, err := storage.NewDeleteKeyOp(client, "/ctx/k").Exec(ctx)
			return err
		}, "/ctx/k"},
		{"delete prefix", func(ctx context.Context) error {
			_, err := storage.NewDeletePrefixOp(client, "/ctx").Exec(ctx)
			return err
		}, "/ctx/"},
		{"delete value", func(ctx context.Context) error {
			return storage.NewDeleteValueOp(client, "/ctx/k", stored).Exec(ctx)
		}, "/ctx/k"},
	}
	for _, tc := range cases {
		t.Run(tc.name+" with a cancelled context", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err := tc.exec(ctx)
			require.ErrorIs(t, err, context.Canceled)
			require.ErrorContains(t, err, tc.key)
		})
		t.Run(tc.name+" past its deadline", func(t *testing.T) {
			ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			defer cancel()
			err := tc.exec(ctx)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.ErrorContains(t, err, tc.key)
		})
	}

	require.Equal(t, []string{"/ctx/k"}, allKeys(t, client), "nothing was written or deleted")
	got, err := storage.NewGetOp[*host](client, "/ctx/k").Exec(testContext(t))
	require.NoError(t, err)
	require.Equal(t, stored, got)
}
