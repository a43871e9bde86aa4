//go:build storage_testhooks

package storage_test

// The chaos test's cluster (chaos_test.go): three members behind bridges, a
// client that bypasses them, and the checks that every member agrees.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdkit/storage/internal/clustertest"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"
)

// chaosCluster is the cluster shared by the runs of one test, with the state
// of its members: every fault restores what it broke before it returns, and
// these fields check it does (two members down lose quorum; Blackhole twice
// panics; a stopped member has no bridge).
type chaosCluster struct {
	t      *testing.T
	clus   *integration.Cluster
	direct *clientv3.Client // every member, bypassing the bridges
	urls   []string         // direct URL of each member
	down   int              // the stopped member, or -1
	holed  int              // the blackholed member, or -1
}

func newChaosCluster(t *testing.T) *chaosCluster {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3, UseBridge: true, SnapshotCount: 50,
		WatchProgressNotifyInterval: 200 * time.Millisecond})
	cc := &chaosCluster{t: t, clus: clus, down: -1, holed: -1}
	for _, m := range clus.Members {
		// With UseBridge, GRPCURL is the bridge's address; the member
		// itself listens on the port without the bridge's trailing 0.
		direct := "unix://" + net.JoinHostPort("localhost", m.GRPCPortNumber())
		require.NotEqual(t, direct, m.GRPCURL, "GRPCURL must be the bridged address")
		cc.urls = append(cc.urls, direct)
	}
	direct, err := integration.NewClient(t, clientv3.Config{Endpoints: cc.urls, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = direct.Close() }) // before Terminate: cleanups run last-in, first-out
	cc.direct = direct
	return cc
}

func (cc *chaosCluster) others(i int) []*integration.Member {
	var others []*integration.Member
	for j, m := range cc.clus.Members {
		if j != i {
			others = append(others, m)
		}
	}
	return others
}

// revision returns etcd's current revision.
func (cc *chaosCluster) revision(ctx context.Context) (int64, error) {
	var rev int64
	err := retryWrite(ctx, func(ctx context.Context) error {
		resp, err := cc.direct.Get(ctx, "/chaos-revision-probe")
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev, err
}

// hashKV checks that every member reports the same HashKV at one revision.
func (cc *chaosCluster) hashKV(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		rev, err := cc.revision(ctx)
		if err != nil {
			return err
		}
		hashes := make([]string, len(cc.urls))
		for i, url := range cc.urls {
			resp, err := cc.direct.HashKV(ctx, url, rev)
			if err != nil {
				hashes[i] = "error: " + err.Error()
				continue
			}
			hashes[i] = fmt.Sprintf("hash %d compact %d", resp.Hash, resp.CompactRevision)
		}
		if slices.Equal(hashes, []string{hashes[0], hashes[0], hashes[0]}) && !strings.HasPrefix(hashes[0], "error") {
			return nil
		}
		last = fmt.Errorf("members disagree on HashKV at revision %d: %v", rev, hashes)
		select { // a lagging member catches up; poll with the deadline
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return last
}
