package storage_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/lease"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

func randomBlob(t *testing.T, n int) *blob {
	t.Helper()
	data := make([]byte, n)
	_, err := rand.Read(data)
	require.NoError(t, err)
	return &blob{Data: data}
}

// requireMissing fails unless key does not exist.
func requireMissing(t *testing.T, client *clientv3.Client, key string) {
	t.Helper()
	ok, err := storage.NewExistsOp(client, key).Exec(testContext(t))
	require.NoError(t, err)
	require.False(t, ok, "%s exists", key)
}

// requireStored fails unless key holds want (version included).
func requireStored(t *testing.T, client *clientv3.Client, key string, want *host) {
	t.Helper()
	got, err := storage.NewGetOp[*host](client, key).Exec(testContext(t))
	require.NoError(t, err)
	require.Equal(t, want, got)
}

func TestPut(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("put creates a missing key", func(t *testing.T) {
		key := storage.Key("put", "new")
		require.NoError(t, storage.NewPutOp(client, key, &host{Name: "a", Port: 1}).Exec(ctx))
		requireStored(t, client, key, hostWithVersion("a", 1, 1))
	})

	t.Run("put overwrites whatever the value's version", func(t *testing.T) {
		key := storage.Key("put", "existing")
		put(t, client, key, "{}")
		for i, version := range []int64{0, 1, 7} {
			require.NoError(t, storage.NewPutOp(client, key, hostWithVersion("b", i, version)).Exec(ctx))
			requireStored(t, client, key, hostWithVersion("b", i, int64(i+2)))
		}
	})

	t.Run("keys are used verbatim", func(t *testing.T) {
		require.NoError(t, storage.NewPutOp(client, "put-no-slash", &host{}).Exec(ctx))
		require.Contains(t, allKeys(t, client), "put-no-slash")
	})
}

func TestCreate(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("create writes a missing key", func(t *testing.T) {
		key := storage.Key("create", "new")
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "a"}).Exec(ctx))
		requireStored(t, client, key, hostWithVersion("a", 0, 1))
	})

	t.Run("create of an existing key fails with ErrAlreadyExists naming the key", func(t *testing.T) {
		key := storage.Key("create", "existing")
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "first"}).Exec(ctx))
		err := storage.NewCreateOp(client, key, &host{Name: "second"}).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrAlreadyExists)
		require.ErrorContains(t, err, key)
		requireStored(t, client, key, hostWithVersion("first", 0, 1))
	})

	t.Run("create of a deleted key succeeds", func(t *testing.T) {
		key := storage.Key("create", "deleted")
		put(t, client, key, "{}")
		_, err := storage.NewDeleteKeyOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "again"}).Exec(ctx))
		requireStored(t, client, key, hostWithVersion("again", 0, 1))
	})
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("update with the stored version succeeds", func(t *testing.T) {
		key := storage.Key("update", "match")
		put(t, client, key, "{}")
		put(t, client, key, "{}")
		require.NoError(t, storage.NewUpdateOp(client, key, hostWithVersion("b", 2, 2)).Exec(ctx))
		requireStored(t, client, key, hostWithVersion("b", 2, 3))
	})

	t.Run("update with version 0 creates a missing key", func(t *testing.T) {
		key := storage.Key("update", "create")
		require.NoError(t, storage.NewUpdateOp(client, key, &host{Name: "new"}).Exec(ctx))
		requireStored(t, client, key, hostWithVersion("new", 0, 1))
	})

	cases := []struct {
		name    string
		puts    int // how often the key is written first (0: missing)
		version int64
	}{
		{"update with a stale version fails", 2, 1},
		{"update with a version ahead of the stored one fails", 1, 2},
		{"update with version 0 of an existing key fails", 1, 0},
		{"update of a missing key with a version fails", 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := storage.Key("update", tc.name)
			for range tc.puts {
				put(t, client, key, `{"name":"stored"}`)
			}
			err := storage.NewUpdateOp(client, key, hostWithVersion("rejected", 0, tc.version)).Exec(ctx)
			require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
			require.ErrorContains(t, err, key)
			require.ErrorContains(t, err, fmt.Sprintf("version %d, stored %d", tc.version, tc.puts))
			if tc.puts == 0 {
				requireMissing(t, client, key)
				return
			}
			requireStored(t, client, key, hostWithVersion("stored", 0, int64(tc.puts)))
		})
	}
}

// TestWriteOpRevision: Revision() is 0 before Exec, then the revision of the
// response, after a failed compare too.
func TestWriteOpRevision(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)
	put(t, client, "/rev/existing", "{}")
	put(t, client, "/rev/prefix/a", "{}")
	put(t, client, "/rev/doomed", "{}")
	put(t, client, "/rev/value", "{}")

	type op interface {
		Revision() int64
	}
	type revOp struct {
		op   op
		exec func() error
	}
	putOp := func(p storage.PutOp[*host]) revOp { return revOp{p, func() error { return p.Exec(ctx) }} }
	deleteOp := func(d storage.DeleteOp) revOp {
		return revOp{d, func() error { _, err := d.Exec(ctx); return err }}
	}
	deleteValueOp := func(d storage.DeleteValueOp[*host]) revOp { return revOp{d, func() error { return d.Exec(ctx) }} }

	cases := []struct {
		name    string
		op      revOp
		wantErr error
	}{
		{"put", putOp(storage.NewPutOp(client, "/rev/put", &host{})), nil},
		{"put with a TTL", putOp(storage.NewPutOp(client, "/rev/ttl", &host{}).WithTTL(time.Minute)), nil},
		{"create", putOp(storage.NewCreateOp(client, "/rev/create", &host{})), nil},
		{"failed create", putOp(storage.NewCreateOp(client, "/rev/existing", &host{})), storage.ErrAlreadyExists},
		{"update", putOp(storage.NewUpdateOp(client, "/rev/existing", hostWithVersion("", 0, 1))), nil},
		{"failed update", putOp(storage.NewUpdateOp(client, "/rev/existing", hostWithVersion("", 0, 9))), storage.ErrValueVersionMismatch},
		{"delete key", deleteOp(storage.NewDeleteKeyOp(client, "/rev/doomed")), nil},
		{"delete of a missing key", deleteOp(storage.NewDeleteKeyOp(client, "/rev/missing")), nil},
		{"delete prefix", deleteOp(storage.NewDeletePrefixOp(client, "/rev/prefix")), nil},
		{"failed delete value", deleteValueOp(storage.NewDeleteValueOp(client, "/rev/value", hostWithVersion("", 0, 9))), storage.ErrValueVersionMismatch},
		{"delete value", deleteValueOp(storage.NewDeleteValueOp(client, "/rev/value", hostWithVersion("", 0, 1))), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Zero(t, tc.op.op.Revision(), "before Exec")
			err := tc.op.exec()
			if tc.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.wantErr)
			}
			require.Equal(t, currentRevision(t, client), tc.op.op.Revision(), "after Exec")
		})
	}
}

func TestWithUpdatedVersion(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	kinds := []struct {
		name string
		op   func(key string, v *record) storage.PutOp[*record]
	}{
		{"put", func(key string, v *record) storage.PutOp[*record] { return storage.NewPutOp(client, key, v) }},
		{"create", func(key string, v *record) storage.PutOp[*record] { return storage.NewCreateOp(client, key, v) }},
		{"update", func(key string, v *record) storage.PutOp[*record] { return storage.NewUpdateOp(client, key, v) }},
	}
	for _, kind := range kinds {
		t.Run(kind.name+" of a new key writes back version 1 and the mod revision", func(t *testing.T) {
			key := storage.Key("uv", kind.name, "new")
			v := &record{Name: "a"}
			op := kind.op(key, v).WithUpdatedVersion()
			require.NoError(t, op.Exec(ctx))
			require.Equal(t, int64(1), v.Version())
			require.Equal(t, op.Revision(), v.ModRevision())
			kv := rawKV(t, client, key)
			require.Equal(t, kv.Version, v.Version())
			require.Equal(t, kv.ModRevision, v.ModRevision())
		})

		t.Run(kind.name+" without WithUpdatedVersion leaves the value alone", func(t *testing.T) {
			key := storage.Key("uv", kind.name, "plain")
			v := &record{Name: "a"}
			require.NoError(t, kind.op(key, v).Exec(ctx))
			require.Zero(t, v.Version())
			require.Zero(t, v.ModRevision())
		})
	}

	for _, kind := range kinds {
		if kind.name == "create" {
			continue
		}
		t.Run(kind.name+" of an existing key writes back the previous version + 1", func(t *testing.T) {
			key := storage.Key("uv", kind.name, "existing")
			for range 3 {
				put(t, client, key, "{}")
			}
			got, err := storage.NewGetOp[*record](client, key).Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, int64(3), got.Version())
			op := kind.op(key, got).WithUpdatedVersion()
			require.NoError(t, op.Exec(ctx))
			require.Equal(t, int64(4), got.Version())
			require.Equal(t, op.Revision(), got.ModRevision())

			// The written-back value is good for the next update.
			got.Count++
			require.NoError(t, storage.NewUpdateOp(client, key, got).WithUpdatedVersion().Exec(ctx))
			require.Equal(t, int64(5), got.Version())

			prev := got.Version()
			require.NoError(t, kind.op(key, got).Exec(ctx))
			require.Equal(t, prev, got.Version(), "without WithUpdatedVersion the version stays")
		})
	}

	t.Run("a StoredValue gets its version written back", func(t *testing.T) {
		key := storage.Key("uv", "host")
		h := &host{Name: "h"}
		require.NoError(t, storage.NewCreateOp(client, key, h).WithUpdatedVersion().Exec(ctx))
		require.Equal(t, hostWithVersion("h", 0, 1), h)
		require.NoError(t, storage.NewUpdateOp(client, key, h).WithUpdatedVersion().Exec(ctx))
		require.Equal(t, hostWithVersion("h", 0, 2), h)
		require.NoError(t, storage.NewPutOp(client, key, h).WithUpdatedVersion().Exec(ctx))
		require.Equal(t, hostWithVersion("h", 0, 3), h)
	})

	t.Run("a failed write leaves the value alone", func(t *testing.T) {
		key := storage.Key("uv", "failed")
		put(t, client, key, "{}")
		h := hostWithVersion("h", 0, 5)
		require.ErrorIs(t, storage.NewUpdateOp(client, key, h).WithUpdatedVersion().Exec(ctx), storage.ErrValueVersionMismatch)
		require.Equal(t, int64(5), h.Version())
		h = &host{}
		require.ErrorIs(t, storage.NewCreateOp(client, key, h).WithUpdatedVersion().Exec(ctx), storage.ErrAlreadyExists)
		require.Zero(t, h.Version())
	})
}

func TestPutWithTTL(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	for _, ttl := range []time.Duration{500 * time.Millisecond, time.Second} {
		t.Run(fmt.Sprintf("a %v key lives at least its TTL and is gone within its bound", ttl), func(t *testing.T) {
			t.Parallel()
			// Documented bound: ceil(ttl + 0.5s) seconds, plus etcd's expiry
			// check every 0.5 s (1.5 s for 500 ms, 2.5 s for 1 s). How late
			// etcd revokes depends on the machine's speed, so the bound is
			// checked on the lease (checkLease) and only logged here;
			// the key must be gone within a generous ttlPatience more.
			bound := time.Duration(math.Ceil((ttl+time.Second/2).Seconds()))*time.Second + time.Second/2
			key := storage.Key("ttl", ttl.String())
			exists := storage.NewExistsOp(client, key)

			start := time.Now()
			require.NoError(t, storage.NewPutOp(client, key, &host{Name: "short-lived"}).WithTTL(ttl).Exec(ctx))
			checkLease(ctx, t, client, key, ttl)

			var lastSeenSent, goneSeen atomic.Int64 // durations since start
			require.Eventually(t, func() bool {
				sent := time.Since(start)
				ok, err := exists.Exec(ctx)
				if err != nil {
					return false
				}
				if ok {
					lastSeenSent.Store(int64(sent))
					return false
				}
				goneSeen.Store(int64(time.Since(start)))
				return true
			}, bound+ttlPatience, 10*time.Millisecond, "the key is never gone")

			t.Logf("last seen by a read sent after %v; gone by %v (documented bound %v)",
				time.Duration(lastSeenSent.Load()), time.Duration(goneSeen.Load()), bound)
			// Reads are linearizable: one that returned "absent" before the
			// TTL had passed proves an early expiry, however slow the
			// machine (a slow read only returns later).
			require.Positive(t, lastSeenSent.Load(), "no read found the key after Exec")
			require.GreaterOrEqual(t, time.Duration(goneSeen.Load()), ttl, "the key is never gone before the TTL")
		})
	}

	t.Run("a put without a TTL detaches the key from its lease", func(t *testing.T) {
		t.Parallel()
		key := storage.Key("ttl", "detached")
		require.NoError(t, storage.NewPutOp(client, key, &host{Name: "leased"}).WithTTL(time.Second).Exec(ctx))
		lease := clientv3.LeaseID(rawKV(t, client, key).Lease)
		require.NotZero(t, lease)

		require.NoError(t, storage.NewPutOp(client, key, &host{Name: "kept"}).Exec(ctx))
		require.Zero(t, rawKV(t, client, key).Lease)

		require.Eventually(t, func() bool {
			resp, err := client.TimeToLive(ctx, lease)
			return err == nil && resp.TTL == -1
		}, 10*time.Second, 50*time.Millisecond, "the lease expires")
		requireStored(t, client, key, hostWithVersion("kept", 0, 2))
	})

	t.Run("create and update take a TTL too", func(t *testing.T) {
		t.Parallel()
		key := storage.Key("ttl", "create")
		h := &host{Name: "c"}
		require.NoError(t, storage.NewCreateOp(client, key, h).WithTTL(time.Minute).WithUpdatedVersion().Exec(ctx))
		require.NotZero(t, rawKV(t, client, key).Lease)
		require.NoError(t, storage.NewUpdateOp(client, key, h).WithTTL(time.Minute).Exec(ctx))
		kv := rawKV(t, client, key)
		require.NotZero(t, kv.Lease)
		resp, err := client.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
		require.NoError(t, err)
		require.LessOrEqual(t, resp.GrantedTTL, int64(61), "the lease is at most ceil(ttl + 0.5s)")
		require.GreaterOrEqual(t, resp.GrantedTTL, int64(60), "the lease is at least the ttl")
	})

	for _, ttl := range []time.Duration{0, -time.Second} {
		t.Run(fmt.Sprintf("a TTL of %v is refused naming the key and nothing is written", ttl), func(t *testing.T) {
			t.Parallel()
			requireTTLRefused(ctx, t, client, storage.Key("ttl", "refused", ttl.String()), ttl, "TTL", false)
		})
	}
}

// TestPutOptions: options clientv3.OpPut panics on are an error naming the
// op and key; nothing is written and no lease is granted.
func TestPutOptions(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)
	key := storage.Key("putopts", "k")

	cases := []struct {
		name string
		op   storage.PutOp[*host]
		want string
	}{
		{"put with a revision", storage.NewPutOp(client, key, &host{}, clientv3.WithRev(3)), "put " + key},
		{"put with a limit", storage.NewPutOp(client, key, &host{}, clientv3.WithLimit(1)), "put " + key},
		{"put with a prefix", storage.NewPutOp(client, key, &host{}, clientv3.WithPrefix()), "put " + key},
		{"put with a range", storage.NewPutOp(client, key, &host{}, clientv3.WithRange("/z")), "put " + key},
		{"put with serializable", storage.NewPutOp(client, key, &host{}, clientv3.WithSerializable()), "put " + key},
		{"put with count only", storage.NewPutOp(client, key, &host{}, clientv3.WithCountOnly()), "put " + key},
		{"put with a sort", storage.NewPutOp(client, key, &host{}, clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)), "put " + key},
		{"put with a TTL and a revision", storage.NewPutOp(client, key, &host{}, clientv3.WithRev(3)).WithTTL(time.Minute), "put " + key},
		{"create with a limit", storage.NewCreateOp(client, key, &host{}, clientv3.WithLimit(1)), "create " + key},
		{"create with a TTL and a revision", storage.NewCreateOp(client, key, &host{}, clientv3.WithRev(3)).WithTTL(time.Minute), "create " + key},
		{"update with serializable", storage.NewUpdateOp(client, key, &host{}, clientv3.WithSerializable()), "update " + key},
		{"update with a min mod revision", storage.NewUpdateOp(client, key, &host{}, clientv3.WithMinModRev(1)), "update " + key},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { err = tc.op.Exec(ctx) })
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "invalid option")
			require.Zero(t, tc.op.Revision())

			require.NotPanics(t, func() { err = storage.NewTxn(client, tc.op).Commit(ctx) })
			require.ErrorContains(t, err, tc.want, "inside a transaction too")

			requireMissing(t, client, key)
			leases, err := client.Leases(ctx)
			require.NoError(t, err)
			require.Empty(t, leases.Leases, "no lease was granted for nothing")
		})
	}
}

// TestSizeLimits: the three limits a large request can hit are told apart,
// each reached with incompressible data.
func TestSizeLimits(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	const limit = 64 << 10
	big := randomBlob(t, 100<<10) // ~133 KiB of base64 JSON, still > 64 KiB gzipped

	t.Run("a put over the server's request size limit", func(t *testing.T) {
		t.Parallel()
		client := newClient(t, storagetest.WithServerConfig(func(c *embed.Config) { c.MaxRequestBytes = limit }))
		for _, op := range []storage.PutOp[*blob]{
			storage.NewPutOp(client, "/big/put", big),
			storage.NewCreateOp(client, "/big/create", big),
		} {
			err := op.Exec(ctx)
			require.ErrorIs(t, err, rpctypes.ErrRequestTooLarge)
			require.ErrorContains(t, err, "request size")
			require.NotContains(t, err.Error(), "client")
			require.Regexp(t, `/big/(put|create)`, err.Error())
		}
		require.Empty(t, allKeys(t, client))

		require.NoError(t, storage.NewPutOp(client, "/big/small", randomBlob(t, 16<<10)).Exec(ctx), "a request under the limit passes")
	})

	t.Run("a put over the client's send limit", func(t *testing.T) {
		t.Parallel()
		client := newClient(t, storagetest.WithClientConfig(func(c *clientv3.Config) { c.MaxCallSendMsgSize = limit }))
		err := storage.NewPutOp(client, "/big/put", big).Exec(ctx)
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
		require.ErrorContains(t, err, "client")
		require.ErrorContains(t, err, "/big/put")
		require.False(t, errors.Is(err, rpctypes.ErrRequestTooLarge), "not the server's limit")
		require.Empty(t, allKeys(t, client))

		require.NoError(t, storage.NewPutOp(client, "/big/small", randomBlob(t, 16<<10)).Exec(ctx), "a request under the limit passes")
	})

	t.Run("a txn over the server's op limit", func(t *testing.T) {
		t.Parallel()
		client := newClient(t, storagetest.WithServerConfig(func(c *embed.Config) { c.MaxTxnOps = 8 }))
		var ops []storage.TxnOperation
		for i := range 9 {
			ops = append(ops, storage.NewPutOp(client, fmt.Sprintf("/ops/%d", i), &host{}))
		}
		err := storage.NewTxn(client, ops...).Commit(ctx)
		require.ErrorIs(t, err, rpctypes.ErrTooManyOps)
		require.Regexp(t, `\b9 ops\b`, err.Error())
		require.Regexp(t, `\b0 compares\b`, err.Error())
		require.NotContains(t, err.Error(), "request size")
		require.Empty(t, allKeys(t, client))

		require.NoError(t, storage.NewTxn(client, ops[:8]...).Commit(ctx), "a txn at the limit passes")
	})
}

// incrementConcurrently runs workers goroutines that each add 1 to the
// value at key times times with Get, inc, Update, retrying on a version
// mismatch, and returns the final value.
func incrementConcurrently[V storage.Value](t *testing.T, client *clientv3.Client, key string, workers, times int, inc func(V)) V {
	t.Helper()
	ctx := testContext(t)
	var conflicts atomic.Int64
	increment := func() error {
		for {
			v, err := storage.NewGetOp[V](client, key).Exec(ctx)
			if err != nil {
				return err
			}
			inc(v)
			err = storage.NewUpdateOp(client, key, v).Exec(ctx)
			if !errors.Is(err, storage.ErrValueVersionMismatch) {
				return err
			}
			conflicts.Add(1)
		}
	}
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range times {
				if err := increment(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("%d increments, %d conflicts retried", workers*times, conflicts.Load())
	got, err := storage.NewGetOp[V](client, key).Exec(ctx)
	require.NoError(t, err)
	return got
}

// TestConcurrentReadModifyWrite: concurrent read-modify-write loops that
// retry on ErrValueVersionMismatch lose no increment.
func TestConcurrentReadModifyWrite(t *testing.T) {
	t.Parallel()
	const workers, times = 8, 25

	t.Run("a StoredValue counter loses no increment", func(t *testing.T) {
		t.Parallel()
		client := newClient(t)
		key := storage.Key("counter", "host")
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "counter"}).Exec(testContext(t)))
		got := incrementConcurrently(t, client, key, workers, times, func(h *host) { h.Port++ })
		require.Equal(t, hostWithVersion("counter", workers*times, workers*times+1), got)
	})

	t.Run("a RevisionedValue counter loses no increment", func(t *testing.T) {
		t.Parallel()
		client := newClient(t)
		key := storage.Key("counter", "record")
		require.NoError(t, storage.NewCreateOp(client, key, &record{Name: "counter"}).Exec(testContext(t)))
		got := incrementConcurrently(t, client, key, workers, times, func(r *record) { r.Count++ })
		require.Equal(t, workers*times, got.Count)
		require.Equal(t, int64(workers*times+1), got.Version())
	})
}

func TestNilValuesAreRefused(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	var nilHost *host
	ops := map[string]storage.TxnOperation{
		"put":          storage.NewPutOp(client, "/nil/put", nilHost).WithUpdatedVersion(),
		"create":       storage.NewCreateOp(client, "/nil/create", nilHost),
		"update":       storage.NewUpdateOp(client, "/nil/update", nilHost),
		"delete value": storage.NewDeleteValueOp(client, "/nil/delete", nilHost),
	}
	for name, op := range ops {
		t.Run(name+" alone is an error naming the key", func(t *testing.T) {
			var err error
			switch op := op.(type) {
			case storage.PutOp[*host]:
				err = op.Exec(ctx)
			case storage.DeleteValueOp[*host]:
				err = op.Exec(ctx)
			}
			require.ErrorContains(t, err, "/nil/")
			require.ErrorContains(t, err, "nil value")
		})
		t.Run(name+" in a txn is an error and nothing is written", func(t *testing.T) {
			err := storage.NewTxn(client, storage.NewPutOp(client, "/nil/other", &host{Name: "x"}), op).Commit(ctx)
			require.ErrorContains(t, err, "nil value")
			resp, err := client.Get(ctx, "/nil/", clientv3.WithPrefix())
			require.NoError(t, err)
			require.Zero(t, resp.Count)
		})
	}
}

// requireTTLRefused requires a put, a create and an update of key with ttl
// each to fail naming the key and reason, with no revision and nothing
// written. With inTxn each op is also committed in a txn, which must fail
// naming the key and write nothing either.
func requireTTLRefused(ctx context.Context, t *testing.T, client *clientv3.Client, key string, ttl time.Duration, reason string, inTxn bool) {
	t.Helper()
	ops := []storage.PutOp[*host]{
		storage.NewPutOp(client, key, &host{}).WithTTL(ttl),
		storage.NewCreateOp(client, key, &host{}).WithTTL(ttl),
		storage.NewUpdateOp(client, key, &host{}).WithTTL(ttl),
	}
	for _, op := range ops {
		err := op.Exec(ctx)
		require.ErrorContains(t, err, key)
		require.ErrorContains(t, err, reason)
		require.Zero(t, op.Revision())
		if inTxn {
			require.ErrorContains(t, storage.NewTxn(client, op).Commit(ctx), key, "inside a transaction too")
		}
		requireMissing(t, client, key)
	}
}

// TestPutWithTTLAtEtcdsMaximumLeaseTTL: a TTL above etcd's maximum lease TTL
// (a common spelling of "forever" is math.MaxInt64) is refused naming the
// key, before a lease is granted; the maximum itself is granted in full.
func TestPutWithTTLAtEtcdsMaximumLeaseTTL(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	maximum := time.Duration(lease.MaxLeaseTTL) * time.Second

	for _, ttl := range []time.Duration{maximum + time.Nanosecond, maximum + time.Second, math.MaxInt64} {
		t.Run(fmt.Sprintf("a TTL of %v is refused naming the key and nothing is written", ttl), func(t *testing.T) {
			requireTTLRefused(ctx, t, client, storage.Key("ttl", "above", ttl.String()), ttl, "maximum lease TTL", true)
			leases, err := client.Leases(ctx)
			require.NoError(t, err)
			require.Empty(t, leases.Leases, "no lease was granted for nothing")
		})
	}

	t.Run("the maximum TTL is granted in full", func(t *testing.T) {
		key := storage.Key("ttl", "maximum")
		require.NoError(t, storage.NewPutOp(client, key, &host{}).WithTTL(maximum).Exec(ctx))
		resp, err := client.TimeToLive(ctx, clientv3.LeaseID(rawKV(t, client, key).Lease))
		require.NoError(t, err)
		require.EqualValues(t, lease.MaxLeaseTTL, resp.GrantedTTL)
		require.Positive(t, resp.TTL)
	})
}

// TestPutWithTTLAndACallersLease: WithTTL attaches the library's lease, so a
// caller's clientv3.WithLease beside it is refused naming the op and key
// rather than silently replaced; a caller's WithLease alone is honoured.
func TestPutWithTTLAndACallersLease(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	grant, err := client.Grant(ctx, 60)
	require.NoError(t, err)
	mine := grant.ID

	for _, tc := range []struct {
		name string
		op   func(key string) storage.PutOp[*host]
		want string
	}{
		{"put", func(key string) storage.PutOp[*host] {
			return storage.NewPutOp(client, key, &host{}, clientv3.WithLease(mine)).WithTTL(time.Minute)
		}, "put "},
		{"create", func(key string) storage.PutOp[*host] {
			return storage.NewCreateOp(client, key, &host{}, clientv3.WithLease(mine)).WithTTL(time.Minute)
		}, "create "},
		{"update", func(key string) storage.PutOp[*host] {
			return storage.NewUpdateOp(client, key, &host{}, clientv3.WithPrevKV(), clientv3.WithLease(mine)).WithTTL(time.Minute)
		}, "update "},
	} {
		t.Run(tc.name+" with WithLease and WithTTL is refused naming the op and key", func(t *testing.T) {
			key := storage.Key("lease", tc.name)
			op := tc.op(key)
			err := op.Exec(ctx)
			require.ErrorContains(t, err, tc.want+key)
			require.ErrorContains(t, err, "WithLease")
			require.ErrorContains(t, err, "WithTTL")
			require.Zero(t, op.Revision())
			require.ErrorContains(t, storage.NewTxn(client, op).Commit(ctx), tc.want+key, "inside a transaction too")
			requireMissing(t, client, key)
			leases, err := client.Leases(ctx)
			require.NoError(t, err)
			require.Equal(t, []clientv3.LeaseStatus{{ID: mine}}, leases.Leases, "no lease was granted for nothing")
		})
	}

	t.Run("a caller's WithLease alone attaches the caller's lease", func(t *testing.T) {
		key := storage.Key("lease", "alone")
		require.NoError(t, storage.NewPutOp(client, key, &host{}, clientv3.WithLease(mine)).Exec(ctx))
		require.EqualValues(t, mine, rawKV(t, client, key).Lease)
	})
}
