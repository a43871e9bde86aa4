package storage_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// storedKV reads key with the raw client: nil when it does not exist.
func storedKV(t *testing.T, client *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := client.Get(testContext(t), key)
	require.NoError(t, err)
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

// putTimes puts key n times, so that its etcd version is n.
func putTimes(t *testing.T, client *clientv3.Client, key string, n int) {
	t.Helper()
	for i := range n {
		put(t, client, key, fmt.Sprintf(`{"name":"v%d"}`, i+1))
	}
}

// requireRevisions checks that every op recorded revision.
func requireRevisions(t *testing.T, revision int64, ops ...storage.TxnOperation) {
	t.Helper()
	for i, op := range ops {
		assert.Equal(t, revision, op.Revision(), "revision of op %d", i)
	}
}

func TestTxnCommitsEveryOpKind(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	putTimes(t, client, "/update", 1)
	putTimes(t, client, "/delete-key", 1)
	putTimes(t, client, "/prefix/a", 1)
	putTimes(t, client, "/prefix/b", 1)
	putTimes(t, client, "/prefixed", 1) // beside the prefix: stays
	putTimes(t, client, "/delete-value", 2)

	ops := []storage.TxnOperation{
		storage.NewPutOp(client, "/put", &host{Name: "put"}),
		storage.NewPutOp(client, "/put-ttl", &host{Name: "put-ttl"}).WithTTL(time.Minute),
		storage.NewCreateOp(client, "/create", &host{Name: "create"}),
		storage.NewUpdateOp(client, "/update", hostWithVersion("update", 0, 1)),
		storage.NewDeleteKeyOp(client, "/delete-key"),
		storage.NewDeletePrefixOp(client, "/prefix"),
		storage.NewDeleteValueOp(client, "/delete-value", hostWithVersion("", 0, 2)),
	}
	require.NoError(t, storage.NewTxn(client, ops...).Commit(ctx))

	revision := currentRevision(t, client)
	requireRevisions(t, revision, ops...)
	for _, tc := range []struct {
		key         string
		wantName    string // "" when the key must be gone
		wantVersion int64
	}{
		{key: "/put", wantName: "put", wantVersion: 1},
		{key: "/put-ttl", wantName: "put-ttl", wantVersion: 1},
		{key: "/create", wantName: "create", wantVersion: 1},
		{key: "/update", wantName: "update", wantVersion: 2},
		{key: "/delete-key"},
		{key: "/prefix/a"},
		{key: "/prefix/b"},
		{key: "/prefixed", wantName: "v1", wantVersion: 1},
		{key: "/delete-value"},
	} {
		kv := storedKV(t, client, tc.key)
		if tc.wantName == "" {
			assert.Nil(t, kv, "%s survived the txn", tc.key)
			continue
		}
		if !assert.NotNil(t, kv, "%s is missing after the txn", tc.key) {
			continue
		}
		var got host
		require.NoError(t, json.Unmarshal(kv.Value, &got), tc.key)
		assert.Equal(t, tc.wantName, got.Name, tc.key)
		assert.Equal(t, tc.wantVersion, kv.Version, "version of %s", tc.key)
	}
	assert.NotZero(t, storedKV(t, client, "/put-ttl").Lease, "the TTL put in a txn is not attached to a lease")
}

func TestTxnWithAFailedCompareWritesNothing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    map[string]int // key: number of puts before the txn
		ops      func(client *clientv3.Client) []storage.TxnOperation
		wantIs   []error
		wantMsgs []string
	}{
		{
			name:  "create of an existing key",
			setup: map[string]int{"/b": 1},
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewPutOp(c, "/put", &host{Name: "x"}),
					storage.NewCreateOp(c, "/b", &host{Name: "x"}),
				}
			},
			wantIs:   []error{storage.ErrAlreadyExists},
			wantMsgs: []string{"create /b: key already exists"},
		},
		{
			name:  "update with a stale version",
			setup: map[string]int{"/a": 5},
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewPutOp(c, "/put", &host{Name: "x"}),
					storage.NewUpdateOp(c, "/a", hostWithVersion("x", 0, 3)),
				}
			},
			wantIs:   []error{storage.ErrValueVersionMismatch},
			wantMsgs: []string{"update /a: version 3, stored 5"},
		},
		{
			name: "update of a missing key",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewPutOp(c, "/put", &host{Name: "x"}),
					storage.NewUpdateOp(c, "/gone", hostWithVersion("x", 0, 2)),
				}
			},
			wantIs:   []error{storage.ErrValueVersionMismatch},
			wantMsgs: []string{"update /gone: version 2, stored 0"},
		},
		{
			name:  "update with version 0 of an existing key",
			setup: map[string]int{"/a": 1},
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewPutOp(c, "/put", &host{Name: "x"}),
					storage.NewUpdateOp(c, "/a", &host{Name: "x"}),
				}
			},
			wantIs:   []error{storage.ErrValueVersionMismatch},
			wantMsgs: []string{"update /a: version 0, stored 1"},
		},
		{
			name:  "delete value with a stale version",
			setup: map[string]int{"/d": 2},
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewDeleteKeyOp(c, "/other"),
					storage.NewDeleteValueOp(c, "/d", hostWithVersion("", 0, 1)),
				}
			},
			wantIs:   []error{storage.ErrValueVersionMismatch},
			wantMsgs: []string{"delete /d: version 1, stored 2"},
		},
		{
			name:  "only and every failed op is named",
			setup: map[string]int{"/a": 5, "/b": 1, "/c": 1, "/d": 3},
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewUpdateOp(c, "/a", hostWithVersion("x", 0, 3)),
					storage.NewCreateOp(c, "/b", &host{Name: "x"}),
					storage.NewUpdateOp(c, "/c", hostWithVersion("x", 0, 1)), // holds
					storage.NewDeleteValueOp(c, "/d", hostWithVersion("", 0, 2)),
					storage.NewDeletePrefixOp(c, "/p"),
				}
			},
			wantIs: []error{storage.ErrValueVersionMismatch, storage.ErrAlreadyExists},
			wantMsgs: []string{
				"update /a: version 3, stored 5",
				"create /b: key already exists",
				"delete /d: version 2, stored 3",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(t)
			ctx := testContext(t)
			before := make(map[string]*mvccpb.KeyValue)
			for key, n := range tc.setup {
				putTimes(t, client, key, n)
			}
			put(t, client, "/p/x", `{"name":"under a prefix"}`)
			for _, key := range []string{"/a", "/b", "/c", "/d", "/gone", "/put", "/other", "/p/x"} {
				before[key] = storedKV(t, client, key)
			}
			revision := currentRevision(t, client)

			ops := tc.ops(client)
			err := storage.NewTxn(client, ops...).Commit(ctx)

			require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
			for _, want := range tc.wantIs {
				require.ErrorIs(t, err, want)
			}
			for _, want := range tc.wantMsgs {
				require.ErrorContains(t, err, want)
			}
			assert.Equal(t, len(tc.wantMsgs), strings.Count(err.Error(), ": value version mismatch")+
				strings.Count(err.Error(), ": key already exists"), "failed ops named in %q", err)
			assert.Equal(t, revision, currentRevision(t, client), "the failed txn wrote something")
			for key, kv := range before {
				assert.Equal(t, kv, storedKV(t, client, key), "%s changed", key)
			}
			requireRevisions(t, revision, ops...)
		})
	}
}

func TestTxnUpdateOfRevisionedValueAfterRecreateFails(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	stale := &record{Name: "old"}
	require.NoError(t, storage.NewCreateOp(client, "/r", stale).WithUpdatedVersion().Exec(ctx))
	staleRev := stale.ModRevision()
	_, err := client.Delete(ctx, "/r")
	require.NoError(t, err)
	recreatedRev := put(t, client, "/r", `{"name":"new","count":0}`)
	require.EqualValues(t, 1, stale.Version(), "the stale value's version equals the re-created key's")

	update := storage.NewUpdateOp(client, "/r", stale)
	err = storage.NewTxn(client, update, storage.NewPutOp(client, "/other", &host{})).Commit(ctx)

	require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
	require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
	require.ErrorContains(t, err, fmt.Sprintf("update /r: mod revision %d, stored %d", staleRev, recreatedRev))
	assert.JSONEq(t, `{"name":"new","count":0}`, string(storedKV(t, client, "/r").Value))
	assert.Nil(t, storedKV(t, client, "/other"))
}

func TestTxnRefusesDuplicateKeys(t *testing.T) {
	// Every put carries a TTL: a refused txn must not even grant a lease.
	ttlPut := func(c *clientv3.Client, key string) storage.TxnOperation {
		return storage.NewPutOp(c, key, &host{Name: "x"}).WithTTL(time.Minute)
	}
	for _, tc := range []struct {
		name     string
		ops      func(c *clientv3.Client) []storage.TxnOperation
		wantMsgs []string // each offending op
		notMsgs  []string // ops that are fine
	}{
		{
			name: "two puts of one key",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{ttlPut(c, "/a"), ttlPut(c, "/b"), ttlPut(c, "/a")}
			},
			wantMsgs: []string{"put /a, put /a"},
			notMsgs:  []string{"/b"},
		},
		{
			name: "a create and an update of one key",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewCreateOp(c, "/a", &host{}).WithTTL(time.Minute),
					storage.NewUpdateOp(c, "/a", hostWithVersion("x", 0, 1)),
				}
			},
			wantMsgs: []string{"put /a, put /a"},
		},
		{
			name: "a put and a delete of one key",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{ttlPut(c, "/a"), storage.NewDeleteKeyOp(c, "/a")}
			},
			wantMsgs: []string{"put /a", "delete /a"},
		},
		{
			name: "two deletes of one key",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewDeleteValueOp(c, "/a", hostWithVersion("", 0, 1)),
					ttlPut(c, "/b"),
					storage.NewDeleteKeyOp(c, "/a"),
				}
			},
			wantMsgs: []string{"delete /a, delete /a"},
			notMsgs:  []string{"/b"},
		},
		{
			name: "a put inside a prefix another op deletes",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewDeletePrefixOp(c, "/p"),
					ttlPut(c, "/q/x"),
					ttlPut(c, "/p/x"),
				}
			},
			wantMsgs: []string{"delete /p/", "put /p/x"},
			notMsgs:  []string{"/q/x"},
		},
		{
			name: "a foreign put of a key one of ours deletes",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					&foreignOp{key: "/a", val: "raw"},
					ttlPut(c, "/b"),
					storage.NewDeleteKeyOp(c, "/a"),
				}
			},
			wantMsgs: []string{"put /a", "delete /a"},
			notMsgs:  []string{"/b"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(t)
			ctx := testContext(t)
			revision := currentRevision(t, client)

			ops := tc.ops(client)
			err := storage.NewTxn(client, ops...).Commit(ctx)

			require.ErrorIs(t, err, storage.ErrDuplicateKeysInTransaction)
			for _, want := range tc.wantMsgs {
				require.ErrorContains(t, err, want)
			}
			for _, not := range tc.notMsgs {
				require.NotContains(t, err.Error(), not)
			}
			requireRevisions(t, 0, ops...)
			assert.Equal(t, revision, currentRevision(t, client), "the refused txn wrote something")
			leases, err := client.Leases(ctx)
			require.NoError(t, err)
			assert.Empty(t, leases.Leases, "the refused txn granted a lease")
		})
	}
}

func TestTxnAcceptsOpsEtcdAccepts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ops      func(c *clientv3.Client) []storage.TxnOperation
		wantGone []string
		wantKept []string
	}{
		{
			name: "a key delete inside a deleted prefix",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{storage.NewDeletePrefixOp(c, "/p"), storage.NewDeleteKeyOp(c, "/p/a")}
			},
			wantGone: []string{"/p/a", "/p/q/b"},
			wantKept: []string{"/pq"},
		},
		{
			name: "nested prefix deletes",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{storage.NewDeletePrefixOp(c, "/p/q"), storage.NewDeletePrefixOp(c, "/p")}
			},
			wantGone: []string{"/p/a", "/p/q/b"},
			wantKept: []string{"/pq"},
		},
		{
			name: "a put beside a deleted prefix",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{storage.NewDeletePrefixOp(c, "/p/q"), storage.NewPutOp(c, "/p/qr", &host{Name: "x"})}
			},
			wantGone: []string{"/p/q/b"},
			wantKept: []string{"/p/a", "/p/qr", "/pq"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(t)
			for _, key := range []string{"/p/a", "/p/q/b", "/pq"} {
				put(t, client, key, `{"name":"x"}`)
			}

			require.NoError(t, storage.NewTxn(client, tc.ops(client)...).Commit(testContext(t)))

			for _, key := range tc.wantGone {
				assert.Nil(t, storedKV(t, client, key), "%s survived", key)
			}
			for _, key := range tc.wantKept {
				assert.NotNil(t, storedKV(t, client, key), "%s is missing", key)
			}
		})
	}
}

func TestTxnEmptyCommitSendsNothing(t *testing.T) {
	client := newClient(t)
	require.NoError(t, client.Close())
	// A closed client fails every request: nil proves none was sent.
	require.NoError(t, storage.NewTxn(client).Commit(testContext(t)))
}

func TestTxnCommitsAgainAfterRefresh(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	putTimes(t, client, "/a", 2)
	h := hostWithVersion("mine", 0, 1) // read before someone else's put
	update := storage.NewUpdateOp(client, "/a", h).WithUpdatedVersion()
	create := storage.NewCreateOp(client, "/b", &host{Name: "b"})
	txn := storage.NewTxn(client, update, create)

	err := txn.Commit(ctx)
	require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
	require.Nil(t, storedKV(t, client, "/b"), "the failed commit created /b")

	fresh, err := storage.NewGetOp[*host](client, "/a").Exec(ctx)
	require.NoError(t, err)
	h.SetVersion(fresh.Version())
	require.NoError(t, txn.Commit(ctx), "the second commit sends the refreshed version")

	kv := storedKV(t, client, "/a")
	assert.JSONEq(t, `{"name":"mine","port":0}`, string(kv.Value))
	assert.EqualValues(t, 3, kv.Version)
	assert.EqualValues(t, 3, h.Version(), "version written back on the second commit")
	assert.NotNil(t, storedKV(t, client, "/b"))
	requireRevisions(t, kv.ModRevision, update, create)
}

func TestTxnOpsAddedAfterCommitJoinTheNext(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	a := storage.NewPutOp(client, "/a", &host{Name: "a"})
	txn := storage.NewTxn(client, a)
	require.NoError(t, txn.Commit(ctx))
	first := a.Revision()
	require.NotZero(t, first)

	b := storage.NewPutOp(client, "/b", &host{Name: "b"})
	txn.AddOps(b)
	require.NoError(t, txn.Commit(ctx))

	assert.Greater(t, b.Revision(), first)
	assert.Equal(t, b.Revision(), a.Revision(), "a and b were not committed together")
	assert.EqualValues(t, 2, storedKV(t, client, "/a").Version, "the first op is not in the second commit")
	assert.Equal(t, b.Revision(), storedKV(t, client, "/b").ModRevision)
}

func TestTxnWritesVersionsBack(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	putTimes(t, client, "/existing", 2)
	putTimes(t, client, "/existing-record", 4)
	read, err := storage.NewGetOp[*record](client, "/existing-record").Exec(ctx)
	require.NoError(t, err)

	newHost := &host{Name: "new"}
	existingHost := hostWithVersion("existing", 0, 2)
	created := &host{Name: "created"}
	untouched := hostWithVersion("untouched", 0, 7) // no WithUpdatedVersion: keeps 7
	newRecord := &record{Name: "new"}
	ops := []storage.TxnOperation{
		storage.NewPutOp(client, "/new", newHost).WithUpdatedVersion(),
		storage.NewUpdateOp(client, "/existing", existingHost).WithUpdatedVersion(),
		storage.NewCreateOp(client, "/created", created).WithUpdatedVersion(),
		storage.NewPutOp(client, "/untouched", untouched),
		storage.NewPutOp(client, "/new-record", newRecord).WithUpdatedVersion(),
		storage.NewUpdateOp(client, "/existing-record", read).WithUpdatedVersion(),
	}
	require.NoError(t, storage.NewTxn(client, ops...).Commit(ctx))
	revision := currentRevision(t, client)
	requireRevisions(t, revision, ops...)

	for _, tc := range []struct {
		key  string
		v    storage.Value
		want int64
	}{
		{"/new", newHost, 1},
		{"/existing", existingHost, 3},
		{"/created", created, 1},
		{"/untouched", untouched, 7},
		{"/new-record", newRecord, 1},
		{"/existing-record", read, 5},
	} {
		assert.Equal(t, tc.want, tc.v.Version(), "version written back for %s", tc.key)
	}
	assert.Equal(t, revision, newRecord.ModRevision(), "mod revision of a new record")
	assert.Equal(t, revision, read.ModRevision(), "mod revision of an updated record")
	assert.Equal(t, storedKV(t, client, "/existing-record").ModRevision, read.ModRevision())

	// The written-back state is what etcd holds: updates from it succeed.
	require.NoError(t, storage.NewTxn(client,
		storage.NewUpdateOp(client, "/existing", existingHost),
		storage.NewUpdateOp(client, "/existing-record", read),
		storage.NewUpdateOp(client, "/new-record", newRecord),
	).Commit(ctx))
}

func TestTxnLimits(t *testing.T) {
	t.Run("70 updates fit the default operation limit", func(t *testing.T) {
		client := newClient(t)
		ctx := testContext(t)
		var ops []storage.TxnOperation
		for i := range 70 {
			key := fmt.Sprintf("/k/%03d", i)
			put(t, client, key, `{"name":"x"}`)
			ops = append(ops, storage.NewUpdateOp(client, key, hostWithVersion("y", 0, 1)))
		}
		require.NoError(t, storage.NewTxn(client, ops...).Commit(ctx))
		resp, err := client.Get(ctx, "/k/", clientv3.WithPrefix())
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 70)
		for _, kv := range resp.Kvs {
			assert.EqualValues(t, 2, kv.Version, "%s not updated", kv.Key)
		}
	})

	t.Run("129 ops exceed the default operation limit", func(t *testing.T) {
		client := newClient(t)
		ctx := testContext(t)
		var ops []storage.TxnOperation
		for i := range 129 {
			key := fmt.Sprintf("/k/%03d", i)
			if i%2 == 0 {
				ops = append(ops, storage.NewCreateOp(client, key, &host{}))
			} else {
				ops = append(ops, storage.NewPutOp(client, key, &host{}))
			}
		}
		err := storage.NewTxn(client, ops...).Commit(ctx)
		require.ErrorIs(t, err, rpctypes.ErrTooManyOps)
		require.ErrorContains(t, err, "129 ops and 65 compares")
		require.ErrorContains(t, err, "operation limit")
		assert.Nil(t, storedKV(t, client, "/k/000"))
	})

	// Four values of 32 KiB random bytes: about 170 KiB of JSON, 130 KiB
	// once gzipped, far over a 64 KiB limit.
	bigOps := func(t *testing.T, client *clientv3.Client) []storage.TxnOperation {
		t.Helper()
		var ops []storage.TxnOperation
		for i := range 4 {
			data := make([]byte, 32<<10)
			_, err := rand.Read(data)
			require.NoError(t, err)
			ops = append(ops, storage.NewPutOp(client, fmt.Sprintf("/big/%d", i), &blob{Data: data}))
		}
		return ops
	}

	t.Run("the server's request size limit is named", func(t *testing.T) {
		client := newClient(t, storagetest.WithServerConfig(func(c *embed.Config) { c.MaxRequestBytes = 64 << 10 }))
		err := storage.NewTxn(client, bigOps(t, client)...).Commit(testContext(t))
		require.ErrorIs(t, err, rpctypes.ErrRequestTooLarge)
		require.ErrorContains(t, err, "server's request size limit")
		require.ErrorContains(t, err, "4 ops and 0 compares")
		require.NotContains(t, err.Error(), "client's gRPC message size limit")
		assert.Nil(t, storedKV(t, client, "/big/0"))
	})

	t.Run("the client's send limit is named", func(t *testing.T) {
		client := newClient(t,
			storagetest.WithServerConfig(func(c *embed.Config) { c.MaxRequestBytes = 8 << 20 }),
			storagetest.WithClientConfig(func(c *clientv3.Config) { c.MaxCallSendMsgSize = 64 << 10 }))
		err := storage.NewTxn(client, bigOps(t, client)...).Commit(testContext(t))
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
		require.ErrorContains(t, err, "client's gRPC message size limit")
		require.ErrorContains(t, err, "4 ops and 0 compares")
		require.NotErrorIs(t, err, rpctypes.ErrRequestTooLarge)
		require.NotContains(t, err.Error(), "server's request size limit")
		assert.Nil(t, storedKV(t, client, "/big/0"))
	})
}

func TestTxnCommitWithACancelledContextFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  func(c *clientv3.Client) []storage.TxnOperation
	}{
		{
			name: "a conditional txn",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewCreateOp(c, "/a", &host{}),
					storage.NewUpdateOp(c, "/b", &host{}),
				}
			},
		},
		{
			name: "a txn whose put needs a lease",
			ops: func(c *clientv3.Client) []storage.TxnOperation {
				return []storage.TxnOperation{
					storage.NewPutOp(c, "/a", &host{}).WithTTL(time.Minute),
					storage.NewPutOp(c, "/b", &host{}),
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(t)
			ctx, cancel := context.WithCancel(testContext(t))
			cancel()

			err := storage.NewTxn(client, tc.ops(client)...).Commit(ctx)

			require.ErrorIs(t, err, context.Canceled)
			assert.Nil(t, storedKV(t, client, "/a"))
			assert.Nil(t, storedKV(t, client, "/b"))
		})
	}
}

// TestTxnCommittedFromManyGoroutinesRunsEachCommitAlone: a Txn committed
// from several goroutines at once runs one Commit at a time, each with the
// versions the previous one wrote back, so an update with
// WithUpdatedVersion never conflicts with its own Txn (and -race sees no
// race on the ops or their values).
func TestTxnCommittedFromManyGoroutinesRunsEachCommitAlone(t *testing.T) {
	client := newClient(t)
	ctx := testContext(t)
	const (
		goroutines = 4
		commits    = 10 // per goroutine
	)
	counter := &record{Name: "counter"}
	require.NoError(t, storage.NewCreateOp(client, "/c/counter", counter).WithUpdatedVersion().Exec(ctx))
	put(t, client, "/c/p/x", `{"name":"x"}`)
	h := &host{Name: "h"}
	txn := storage.NewTxn(client,
		storage.NewUpdateOp(client, "/c/counter", counter).WithUpdatedVersion(),
		storage.NewPutOp(client, "/c/put", h).WithUpdatedVersion().WithTTL(time.Minute),
		storage.NewDeleteKeyOp(client, "/c/gone"),
		storage.NewDeletePrefixOp(client, "/c/p"),
	)

	start := make(chan struct{})
	errs := make(chan error, goroutines*commits)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			<-start
			for range commits {
				errs <- txn.Commit(ctx)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "a commit conflicted with another commit of the same Txn")
	}

	const total = goroutines * commits
	assert.EqualValues(t, total+1, storedKV(t, client, "/c/counter").Version)
	assert.EqualValues(t, total+1, counter.Version(), "the last commit's version is written back")
	assert.EqualValues(t, total, h.Version())
	assert.Equal(t, storedKV(t, client, "/c/counter").ModRevision, counter.ModRevision())
}

// TestTxnNeverBlamesAnOpWithoutACompare: when a foreign op's compare on the
// key of one of our unconditional ops fails, only the foreign op is named,
// and the error does not claim a version mismatch.
func TestTxnNeverBlamesAnOpWithoutACompare(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  string // the key our op writes, stored with version 3
		op   func(c *clientv3.Client) storage.TxnOperation
		not  string // how our op would be named
	}{
		{"a put", "/a", func(c *clientv3.Client) storage.TxnOperation {
			return storage.NewPutOp(c, "/a", &host{Name: "x"})
		}, "put /a"},
		{"a put with a TTL", "/a", func(c *clientv3.Client) storage.TxnOperation {
			return storage.NewPutOp(c, "/a", hostWithVersion("x", 0, 3)).WithTTL(time.Minute)
		}, "put /a"},
		{"a key delete", "/a", func(c *clientv3.Client) storage.TxnOperation {
			return storage.NewDeleteKeyOp(c, "/a")
		}, "delete /a"},
		{"a prefix delete", "/p/a", func(c *clientv3.Client) storage.TxnOperation {
			return storage.NewDeletePrefixOp(c, "/p")
		}, "delete prefix"},
	} {
		t.Run(tc.name+" is not named", func(t *testing.T) {
			client := newClient(t)
			putTimes(t, client, tc.key, 3)
			revision := currentRevision(t, client)
			ours := tc.op(client)
			foreign := &foreignOp{key: "/f", val: "raw", cmps: []clientv3.Cmp{
				clientv3.Compare(clientv3.Version(tc.key), "=", 1),
			}}

			err := storage.NewTxn(client, ours, foreign).Commit(testContext(t))

			require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
			require.ErrorContains(t, err, "put /f: compare on "+tc.key+" failed")
			assert.NotErrorIs(t, err, storage.ErrValueVersionMismatch)
			assert.NotContains(t, err.Error(), tc.not)
			assert.EqualValues(t, 3, storedKV(t, client, tc.key).Version, "the failed txn wrote %s", tc.key)
			requireRevisions(t, revision, ours, foreign)
		})
	}
}

// TestTxnRefusesDeletingTheWholeKeyspaceFirst: an empty prefix delete beside
// a put is refused for what it is, not as a put inside a deleted prefix.
func TestTxnRefusesDeletingTheWholeKeyspaceFirst(t *testing.T) {
	for _, prefix := range []string{"", "/"} {
		t.Run(fmt.Sprintf("delete prefix %q with a put", prefix), func(t *testing.T) {
			client := newClient(t)
			ctx := testContext(t)
			revision := currentRevision(t, client)
			ops := []storage.TxnOperation{
				storage.NewPutOp(client, "/a", &host{Name: "x"}).WithTTL(time.Minute),
				storage.NewDeletePrefixOp(client, prefix),
			}

			err := storage.NewTxn(client, ops...).Commit(ctx)

			require.ErrorContains(t, err, fmt.Sprintf("delete prefix %q: refusing to delete the whole keyspace", prefix))
			assert.NotErrorIs(t, err, storage.ErrDuplicateKeysInTransaction)
			requireRevisions(t, 0, ops...)
			assert.Equal(t, revision, currentRevision(t, client), "the refused txn wrote something")
			leases, err := client.Leases(ctx)
			require.NoError(t, err)
			assert.Empty(t, leases.Leases, "the refused txn granted a lease")
		})
	}
}

// beforeExplainRead returns a client option that calls f before the client
// sends the read that explains a failed txn: a txn without compares of
// reads pinned to a revision.
func beforeExplainRead(f func()) storagetest.Option {
	return storagetest.WithClientConfig(func(cfg *clientv3.Config) {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if r, ok := req.(*pb.TxnRequest); ok && len(r.Compare) == 0 && len(r.Success) > 0 && r.Success[0].GetRequestRange().GetRevision() > 0 {
				f()
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}))
	})
}

// TestTxnFailureIsExplainedAsOfTheFailedRevision: the key changes between
// the failed txn and the read that explains it; the explanation gives the
// version the compare saw, not the newer one.
func TestTxnFailureIsExplainedAsOfTheFailedRevision(t *testing.T) {
	var c *clientv3.Client
	var reads atomic.Int32
	c = newClient(t, beforeExplainRead(func() {
		reads.Add(1)
		put(t, c, "/a", "later") // version 3
	}))
	put(t, c, "/a", "1")
	put(t, c, "/a", "2")
	update := storage.NewUpdateOp(c, "/a", hostWithVersion("x", 0, 1))
	err := storage.NewTxn(c, update, storage.NewCreateOp(c, "/b", &host{Name: "x"})).Commit(testContext(t))
	require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
	require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
	require.ErrorContains(t, err, "update /a: version 1, stored 2")
	require.NotContains(t, err.Error(), "/b", "the create's compare held")
	require.EqualValues(t, 1, reads.Load(), "explaining reads sent")
	require.EqualValues(t, 3, storedKV(t, c, "/a").Version, "the key changed before the explaining read")
}

// TestTxnFailureWhoseExplainingReadFailsSaysWhatIsKnown: etcd compacts past
// the failed txn's revision before the read that was to explain it. The
// error still wraps ErrOperationConstraintViolated, names the compared keys
// and wraps the read's error.
func TestTxnFailureWhoseExplainingReadFailsSaysWhatIsKnown(t *testing.T) {
	var c *clientv3.Client
	var reads atomic.Int32
	c = newClient(t, beforeExplainRead(func() {
		reads.Add(1)
		rev := put(t, c, "/elsewhere", "x")
		_, err := c.Compact(testContext(t), rev, clientv3.WithCompactPhysical())
		require.NoError(t, err)
	}))
	put(t, c, "/a", "1")
	err := storage.NewTxn(c,
		storage.NewCreateOp(c, "/a", &host{Name: "x"}),
		storage.NewCreateOp(c, "/b", &host{Name: "x"}),
	).Commit(testContext(t))
	require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
	require.NotErrorIs(t, err, storage.ErrAlreadyExists, "which compare failed is unknown")
	require.ErrorContains(t, err, "a compare on /a, /b failed")
	require.EqualValues(t, 1, reads.Load(), "explaining reads sent")
	require.Nil(t, storedKV(t, c, "/b"), "nothing written")

	// Alone, the op's failed compare says which sentinel it is: the failed
	// read only takes the details away. A create needs no read at all.
	stale := func() *host {
		h := &host{Name: "x"}
		h.SetVersion(7)
		return h
	}
	type execer interface {
		storage.TxnOperation
		Exec(ctx context.Context) error
	}
	for _, tc := range []struct {
		name     string
		op       func() execer
		sentinel error
		says     string
		reads    int32 // explaining reads sent
	}{
		{"create", func() execer { return storage.NewCreateOp(c, "/a", &host{Name: "x"}) }, storage.ErrAlreadyExists, "create /a: key already exists", 0},
		{"update", func() execer { return storage.NewUpdateOp(c, "/a", stale()) }, storage.ErrValueVersionMismatch, "update /a: ", 1},
		{"delete value", func() execer { return storage.NewDeleteValueOp(c, "/a", stale()) }, storage.ErrValueVersionMismatch, "delete /a: ", 1},
	} {
		check := func(t *testing.T, err error, before int32) {
			t.Helper()
			require.ErrorIs(t, err, tc.sentinel)
			require.ErrorContains(t, err, tc.says)
			if tc.reads > 0 {
				require.ErrorIs(t, err, rpctypes.ErrCompacted)
			}
			require.Equal(t, before+tc.reads, reads.Load(), "explaining reads sent")
			require.Equal(t, "1", string(storedKV(t, c, "/a").Value), "nothing written")
		}
		t.Run("a lone "+tc.name+" run by Exec still wraps its sentinel", func(t *testing.T) {
			before := reads.Load()
			check(t, tc.op().Exec(testContext(t)), before)
		})
		t.Run("a txn of one "+tc.name+" wraps its sentinel and the txn's", func(t *testing.T) {
			before := reads.Load()
			err := storage.NewTxn(c, tc.op()).Commit(testContext(t))
			require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
			check(t, err, before)
		})
	}
}
