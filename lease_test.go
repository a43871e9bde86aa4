package storage_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// TestTTLPutsAfterTheSharedLeaseIsRevokedAllSucceed: when another client
// revokes the shared lease, every TTL put that was about to use it is sent
// again once with a fresh lease, however many run at once, and the fresh
// lease is granted once and shared by all of them.
func TestTTLPutsAfterTheSharedLeaseIsRevokedAllSucceed(t *testing.T) {
	s := newServer(t)
	client := s.Client()
	other := newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second})
	ctx := testContext(t)
	const (
		rounds = 5
		puts   = 16
		ttl    = time.Minute // no lease runs short of it during the test
	)

	for round := range rounds {
		// A probe put learns the group's current lease: every put below
		// starts with it, so each first attempt is sent with a revoked lease.
		probe := fmt.Sprintf("/lease/%d/probe", round)
		require.NoError(t, storage.NewPutOp(client, probe, &host{Name: "probe"}).WithTTL(ttl).Exec(ctx))
		revoked := clientv3.LeaseID(rawKV(t, client, probe).Lease)
		require.NotZero(t, revoked, "round %d: the probe is attached to a lease", round)
		_, err := other.Revoke(ctx, revoked)
		require.NoError(t, err, "round %d: revoke the shared lease from another client", round)

		start := make(chan struct{})
		errs := make([]error, puts)
		var wg sync.WaitGroup
		for i := range puts {
			wg.Go(func() {
				<-start
				key := fmt.Sprintf("/lease/%d/%02d", round, i)
				errs[i] = storage.NewPutOp(client, key, &host{Name: key}).WithTTL(ttl).Exec(ctx)
			})
		}
		close(start)
		wg.Wait()

		leases := make(map[int64]bool)
		for i, err := range errs {
			require.NoError(t, err, "round %d: put %d", round, i)
			kv := rawKV(t, client, fmt.Sprintf("/lease/%d/%02d", round, i))
			require.NotEqual(t, int64(revoked), kv.Lease, "round %d: put %d kept the revoked lease", round, i)
			leases[kv.Lease] = true
		}
		for lease := range leases {
			resp, err := other.TimeToLive(ctx, clientv3.LeaseID(lease))
			require.NoError(t, err)
			assert.Positive(t, resp.TTL, "round %d: lease %x is live", round, lease)
		}
		assert.Len(t, leases, 1, "round %d: the retries share one fresh lease: only the revoked one is forgotten", round)
	}
}
