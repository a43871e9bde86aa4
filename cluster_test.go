package storage_test

// Tests against a three-member cluster of etcd's integration framework. Every
// top-level test starts its own cluster through clustertest.New (which calls
// BeforeTest once); none is parallel, and none runs under -short.

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
)

func TestClusterOpsSeeWritesThroughOtherMembers(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3})
	ctx := testContext(t)
	c0, c1, c2 := clus.Client(0), clus.Client(1), clus.Client(2)

	t.Log("phase 1: create through member 0, read through member 1")
	created := &host{Name: "db-1", Port: 5432}
	require.NoError(t, storage.NewCreateOp(c0, "/hosts/a", created).WithUpdatedVersion().Exec(ctx))
	read, err := storage.NewGetOp[*host](c1, "/hosts/a").Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, created, read)

	t.Log("phase 2: update through member 2 with the value member 1 read")
	stale := *read
	read.Port = 6543
	require.NoError(t, storage.NewUpdateOp(c2, "/hosts/a", read).Exec(ctx))
	err = storage.NewUpdateOp(c1, "/hosts/a", &stale).Exec(ctx)
	require.ErrorIs(t, err, storage.ErrValueVersionMismatch, "member 1's compare missed member 2's write")
	again, err := storage.NewGetOp[*host](c0, "/hosts/a").Exec(ctx)
	require.NoError(t, err)
	assert.Equal(t, 6543, again.Port)
	assert.EqualValues(t, 2, again.Version())

	t.Log("phase 3: a txn through member 1, read through members 0 and 2")
	txn := storage.NewTxn(c1,
		storage.NewDeleteValueOp(c1, "/hosts/a", again),
		storage.NewCreateOp(c1, "/hosts/b", &host{Name: "db-2"}),
	)
	require.NoError(t, txn.Commit(ctx))
	exists, err := storage.NewExistsOp(c2, "/hosts/a").Exec(ctx)
	require.NoError(t, err)
	assert.False(t, exists, "member 2 still sees the deleted key")
	hosts, err := storage.NewGetPrefixOp[*host](c0, "/hosts").Exec(ctx)
	require.NoError(t, err)
	want := &host{Name: "db-2"}
	want.SetVersion(1)
	assert.Equal(t, []*host{want}, hosts)
}

func TestClusterTxnCommitsAfterLeaderStops(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3})
	ctx := testContext(t)
	a := &host{Name: "a"}
	require.NoError(t, storage.NewCreateOp(clus.Client(0), "/a", a).WithUpdatedVersion().Exec(ctx))

	t.Log("phase 1: stop the leader")
	stopped := clus.WaitLeader(t)
	clus.Members[stopped].Stop(t)
	var live []int
	for i := range clus.Members {
		if i != stopped {
			live = append(live, i)
		}
	}
	leader := live[clus.WaitMembersForLeader(t, []*integration.Member{clus.Members[live[0]], clus.Members[live[1]]})]
	require.NotEqual(t, stopped, leader, "the stopped member is still the leader")
	writer, reader := clus.Client(live[0]), clus.Client(live[1])
	if live[0] == leader {
		// Write through a follower: it must forward to the new leader.
		writer, reader = reader, writer
	}

	t.Log("phase 2: commit a txn through a member that was a follower")
	a.Port = 1
	update := storage.NewUpdateOp(writer, "/a", a).WithUpdatedVersion()
	create := storage.NewCreateOp(writer, "/b", &host{Name: "b"})
	require.NoError(t, storage.NewTxn(writer, update, create).Commit(ctx))
	assert.EqualValues(t, 2, a.Version())
	assert.NotZero(t, update.Revision())

	got, err := storage.NewGetMultipleOp[*host](reader, []string{"/a", "/b"}).Exec(ctx)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, a, got[0])
	assert.Equal(t, "b", got[1].Name)

	t.Log("phase 3: restart the stopped member; it catches up")
	require.NoError(t, clus.Members[stopped].Restart(t))
	clus.WaitLeader(t)
	restarted := clus.Client(stopped)
	require.Eventually(t, func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := restarted.Get(rctx, "/b", clientv3.WithCountOnly())
		return err == nil && resp.Count == 1
	}, 20*time.Second, 50*time.Millisecond, "the restarted member never served the txn's write")
	fromRestarted, err := storage.NewGetOp[*host](restarted, "/a").Exec(ctx)
	require.NoError(t, err)
	assert.Equal(t, a, fromRestarted)
}
