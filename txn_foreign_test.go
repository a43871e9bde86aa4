package storage_test

// A TxnOperation written outside the package in a transaction.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// foreignOp is a TxnOperation written outside the package: a raw put guarded
// by raw compares. Commit sees it through the interface alone.
type foreignOp struct {
	key, val string
	cmps     []clientv3.Cmp
	revision int64
}

var _ storage.TxnOperation = (*foreignOp)(nil)

func (f *foreignOp) ClientOp(context.Context) (clientv3.Op, error) {
	return clientv3.OpPut(f.key, f.val), nil
}

func (f *foreignOp) Cmps() []clientv3.Cmp { return f.cmps }

func (f *foreignOp) UpdateRevision(revision int64) { f.revision = revision }

func (f *foreignOp) Revision() int64 { return f.revision }

func TestTxnForeignOp(t *testing.T) {
	isYes := func() []clientv3.Cmp {
		return []clientv3.Cmp{clientv3.Compare(clientv3.Value("/x"), "=", "yes")}
	}

	t.Run("commits with ours when its compare holds", func(t *testing.T) {
		client := newClient(t)
		put(t, client, "/x", "yes")
		foreign := &foreignOp{key: "/f", val: "raw", cmps: isYes()}
		create := storage.NewCreateOp(client, "/c", &host{Name: "c"})

		require.NoError(t, storage.NewTxn(client, create, foreign).Commit(testContext(t)))

		assert.Equal(t, "raw", string(storedKV(t, client, "/f").Value))
		assert.NotNil(t, storedKV(t, client, "/c"))
		requireRevisions(t, currentRevision(t, client), create, foreign)
	})

	t.Run("its failed compare fails the txn and is reported", func(t *testing.T) {
		client := newClient(t)
		put(t, client, "/x", "no")
		revision := currentRevision(t, client)
		foreign := &foreignOp{key: "/f", val: "raw", cmps: isYes()}
		create := storage.NewCreateOp(client, "/c", &host{Name: "c"})

		err := storage.NewTxn(client, create, foreign).Commit(testContext(t))

		require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
		require.ErrorContains(t, err, "put /f: compare on /x failed")
		require.NotContains(t, err.Error(), "/c", "the create's compare held")
		assert.Nil(t, storedKV(t, client, "/f"))
		assert.Nil(t, storedKV(t, client, "/c"))
		requireRevisions(t, revision, create, foreign)
	})

	t.Run("its holding compare is not blamed for our op's failure", func(t *testing.T) {
		client := newClient(t)
		put(t, client, "/x", "yes")
		put(t, client, "/c", `{"name":"taken"}`)
		foreign := &foreignOp{key: "/f", val: "raw", cmps: isYes()}
		create := storage.NewCreateOp(client, "/c", &host{Name: "c"})

		err := storage.NewTxn(client, create, foreign).Commit(testContext(t))

		require.ErrorIs(t, err, storage.ErrAlreadyExists)
		require.ErrorContains(t, err, "create /c: key already exists")
		require.NotContains(t, err.Error(), "/x", "a compare that held is reported as failed")
		assert.Nil(t, storedKV(t, client, "/f"))
	})

	// etcd judges each foreign compare (clientv3.Cmp cannot be read back
	// from 3.7 on), so its verdict holds where a reading of the compared key
	// would not: over a range, and for a value of a missing key.
	t.Run("each compare is reported as etcd judged it", func(t *testing.T) {
		client := newClient(t)
		put(t, client, "/x", "yes")
		put(t, client, "/p/a", "1")
		rev := put(t, client, "/p/b", "2")
		foreign := &foreignOp{key: "/f", val: "raw", cmps: []clientv3.Cmp{
			clientv3.Compare(clientv3.Value("/x"), "=", "yes"), // holds
			// Fails on /p/b alone; /p/ itself does not exist.
			clientv3.Compare(clientv3.ModRevision("/p/").WithPrefix(), "<", rev),
			// etcd fails any value compare on a missing key, even "!=".
			clientv3.Compare(clientv3.Value("/missing"), "!=", "x"),
			clientv3.Compare(clientv3.Version("/p/a"), "=", 1), // holds
		}}

		err := storage.NewTxn(client, foreign).Commit(testContext(t))

		require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
		require.ErrorContains(t, err, "put /f: compare on /p/ failed; put /f: compare on /missing failed")
		require.NotContains(t, err.Error(), "/x", "a compare that held is reported as failed")
		require.NotContains(t, err.Error(), "/p/a", "a compare that held is reported as failed")
		assert.Nil(t, storedKV(t, client, "/f"))
	})

	t.Run("a value compare over a range sees the value of a key our op compares", func(t *testing.T) {
		client := newClient(t)
		put(t, client, "/v/a", `{"name":"x"}`)
		put(t, client, "/v/b", `{"name":"x"}`)
		update := storage.NewUpdateOp(client, "/v/a", hostWithVersion("y", 0, 1)) // holds
		foreign := &foreignOp{key: "/f", val: "raw", cmps: []clientv3.Cmp{
			clientv3.Compare(clientv3.Value("/v/").WithPrefix(), "=", `{"name":"x"}`), // holds
			clientv3.Compare(clientv3.Version("/nope"), ">", 0),                       // fails
		}}

		err := storage.NewTxn(client, foreign, update).Commit(testContext(t)) // the range is read first

		require.ErrorIs(t, err, storage.ErrOperationConstraintViolated)
		require.ErrorContains(t, err, "put /f: compare on /nope failed")
		require.NotContains(t, err.Error(), "/v/", "a compare that held is reported as failed")
	})

	t.Run("128 compares, ours and its, fit the default operation limit when they fail", func(t *testing.T) {
		client := newClient(t)
		ctx := testContext(t)
		var ops []storage.TxnOperation
		var cmps []clientv3.Cmp
		for i := range 64 {
			ours, its := fmt.Sprintf("/ours/%02d", i), fmt.Sprintf("/its/%02d", i)
			put(t, client, ours, `{"name":"taken"}`)
			put(t, client, its, "taken")
			ops = append(ops, storage.NewCreateOp(client, ours, &host{}))
			cmps = append(cmps, clientv3.Compare(clientv3.Version(its), "=", 0))
		}
		ops = append(ops, &foreignOp{key: "/f", val: "raw", cmps: cmps})

		err := storage.NewTxn(client, ops...).Commit(ctx)

		require.ErrorIs(t, err, storage.ErrOperationConstraintViolated, "the explaining read must fit the limit too")
		require.NotErrorIs(t, err, rpctypes.ErrTooManyOps)
		msg := err.Error()
		assert.Equal(t, 64, strings.Count(msg, ": key already exists"), msg)
		assert.Equal(t, 64, strings.Count(msg, "put /f: compare on /its/"), msg)
	})
}
