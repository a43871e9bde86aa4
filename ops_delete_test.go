package storage_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// allKeys returns every key in etcd, in key order.
func allKeys(t *testing.T, client *clientv3.Client) []string {
	t.Helper()
	resp, err := client.Get(testContext(t), "", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	keys := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i] = string(kv.Key)
	}
	return keys
}

func TestDeleteKey(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("deletes exactly the key and reports one deletion", func(t *testing.T) {
		for _, key := range []string{"/d/k", "/d/k/x", "/d/k2", "/d/j"} {
			put(t, client, key, "{}")
		}
		op := storage.NewDeleteKeyOp(client, "/d/k")
		require.Zero(t, op.Revision())
		n, err := op.Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		require.Equal(t, currentRevision(t, client), op.Revision())
		require.Equal(t, []string{"/d/j", "/d/k/x", "/d/k2"}, allKeys(t, client))
	})

	t.Run("a missing key deletes nothing and is no error", func(t *testing.T) {
		before := currentRevision(t, client)
		op := storage.NewDeleteKeyOp(client, "/d/missing")
		n, err := op.Exec(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		require.Equal(t, before, op.Revision(), "nothing was written")
	})

	t.Run("keys are used verbatim", func(t *testing.T) {
		put(t, client, "no-slash", "{}")
		n, err := storage.NewDeleteKeyOp(client, "no-slash").Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
	})
}

func TestDeletePrefix(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)

	t.Run("deletes every key below the prefix and reports how many", func(t *testing.T) {
		client := newClient(t)
		for _, key := range []string{"/p/a", "/p/b", "/p/c/d", "/q/a"} {
			put(t, client, key, "{}")
		}
		op := storage.NewDeletePrefixOp(client, storage.Prefix("p"))
		require.Zero(t, op.Revision())
		n, err := op.Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(3), n)
		require.Equal(t, currentRevision(t, client), op.Revision())
		require.Equal(t, []string{"/q/a"}, allKeys(t, client))
	})

	t.Run("a prefix with nothing below deletes nothing", func(t *testing.T) {
		client := newClient(t)
		put(t, client, "/p", "{}")
		n, err := storage.NewDeletePrefixOp(client, "/p").Exec(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		require.Equal(t, []string{"/p"}, allKeys(t, client))
	})

	for _, prefix := range []string{"", "/"} {
		t.Run("the empty prefix "+`"`+prefix+`"`+" is refused and nothing is deleted", func(t *testing.T) {
			client := newClient(t)
			for _, key := range []string{"/", "/a", "b"} {
				put(t, client, key, "{}")
			}
			op := storage.NewDeletePrefixOp(client, prefix)
			n, err := op.Exec(ctx)
			require.ErrorContains(t, err, "delete prefix")
			require.ErrorContains(t, err, `"`+prefix)
			require.Zero(t, n)
			require.Zero(t, op.Revision())
			require.Equal(t, []string{"/", "/a", "b"}, allKeys(t, client))

			// Inside a transaction too.
			err = storage.NewTxn(client, storage.NewDeletePrefixOp(client, prefix)).Commit(ctx)
			require.ErrorContains(t, err, "delete prefix")
			require.Equal(t, []string{"/", "/a", "b"}, allKeys(t, client))
		})
	}
}

func TestDeleteValue(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("the stored version deletes the key", func(t *testing.T) {
		key := storage.Key("dv", "match")
		put(t, client, key, "{}")
		put(t, client, key, "{}")
		op := storage.NewDeleteValueOp(client, key, hostWithVersion("", 0, 2))
		require.Zero(t, op.Revision())
		require.NoError(t, op.Exec(ctx))
		require.Equal(t, currentRevision(t, client), op.Revision())
		ok, err := storage.NewExistsOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.False(t, ok)
	})

	cases := []struct {
		name    string
		puts    int // how often the key is written before the delete (0: missing)
		version int64
	}{
		{"a stale version fails", 2, 1},
		{"a version ahead of the stored one fails", 1, 2},
		{"version 0 of an existing key fails", 1, 0},
		{"a missing key with a version fails", 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := storage.Key("dv", tc.name)
			for range tc.puts {
				put(t, client, key, "{}")
			}
			op := storage.NewDeleteValueOp(client, key, hostWithVersion("", 0, tc.version))
			err := op.Exec(ctx)
			require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
			require.ErrorContains(t, err, key)
			require.Equal(t, currentRevision(t, client), op.Revision(), "the revision is set after a failed compare")
			ok, err := storage.NewExistsOp(client, key).Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, tc.puts > 0, ok, "nothing was deleted")
		})
	}

	t.Run("version 0 of a missing key deletes nothing and succeeds", func(t *testing.T) {
		require.NoError(t, storage.NewDeleteValueOp(client, storage.Key("dv", "never"), &host{}).Exec(ctx))
	})
}

// TestDeleteOptions: options clientv3.OpDelete panics on are an error naming
// the op and key, and nothing is deleted.
func TestDeleteOptions(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)
	key := storage.Key("opts", "k")
	put(t, client, key, "{}")
	put(t, client, key+"/child", "{}")

	deleteKey := "delete " + key
	deletePrefix := "delete prefix " + key + "/"
	stale := hostWithVersion("", 0, 1)
	cases := []struct {
		name string
		op   storage.TxnOperation
		want string
	}{
		{"delete key with a limit", storage.NewDeleteKeyOp(client, key, clientv3.WithLimit(1)), deleteKey},
		{"delete key with a revision", storage.NewDeleteKeyOp(client, key, clientv3.WithRev(1)), deleteKey},
		{"delete key with a lease", storage.NewDeleteKeyOp(client, key, clientv3.WithLease(1)), deleteKey},
		{"delete key with serializable", storage.NewDeleteKeyOp(client, key, clientv3.WithSerializable()), deleteKey},
		{"delete key with count only", storage.NewDeleteKeyOp(client, key, clientv3.WithCountOnly()), deleteKey},
		{"delete key with prefix and from key", storage.NewDeleteKeyOp(client, key, clientv3.WithPrefix(), clientv3.WithFromKey()), deleteKey},
		// A range would turn a single-key delete into a range delete (all of
		// etcd for the empty key) that a Txn's key checks and a Cache miss.
		{"delete key with a prefix", storage.NewDeleteKeyOp(client, key, clientv3.WithPrefix()), deleteKey},
		{"delete key with a range", storage.NewDeleteKeyOp(client, key, clientv3.WithRange("/z")), deleteKey},
		{"delete key with from key", storage.NewDeleteKeyOp(client, key, clientv3.WithFromKey()), deleteKey},
		{"delete of the empty key with a prefix", storage.NewDeleteKeyOp(client, "", clientv3.WithPrefix()), "delete "},
		{"delete prefix with a revision", storage.NewDeletePrefixOp(client, key, clientv3.WithRev(1)), deletePrefix},
		{"delete prefix with from key", storage.NewDeletePrefixOp(client, key, clientv3.WithFromKey()), deletePrefix},
		{"delete prefix with a range", storage.NewDeletePrefixOp(client, key, clientv3.WithRange("/z")), deletePrefix},
		{"delete prefix with prefix and from key", storage.NewDeletePrefixOp(client, key, clientv3.WithPrefix(), clientv3.WithFromKey()), deletePrefix},
		{"delete value with a limit", storage.NewDeleteValueOp(client, key, stale, clientv3.WithLimit(1)), deleteKey},
		{"delete value with a revision", storage.NewDeleteValueOp(client, key, stale, clientv3.WithRev(1)), deleteKey},
		{"delete value with a prefix", storage.NewDeleteValueOp(client, key, stale, clientv3.WithPrefix()), deleteKey},
		{"delete value with a range", storage.NewDeleteValueOp(client, key, stale, clientv3.WithRange("/z")), deleteKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			op := tc.op
			var err error
			require.NotPanics(t, func() {
				switch op := op.(type) {
				case storage.DeleteOp:
					var n int64
					n, err = op.Exec(ctx)
					require.Zero(t, n)
				case storage.DeleteValueOp[*host]:
					err = op.Exec(ctx)
				default:
					t.Fatalf("unexpected op %T", op)
				}
			})
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "invalid option")
			require.Zero(t, op.Revision())
			require.Equal(t, []string{key, key + "/child"}, allKeys(t, client))

			require.NotPanics(t, func() {
				err = storage.NewTxn(client, op).Commit(ctx)
			})
			require.ErrorContains(t, err, tc.want, "inside a transaction too")
			require.Equal(t, []string{key, key + "/child"}, allKeys(t, client))
		})
	}
}
