package storage_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
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

// ttlObservation is what polling a TTL key saw: when the last read that
// found it started and when the first read that missed it returned. Reads
// are linearizable, so the key expired after lastPresentStart and before
// goneEnd: goneEnd before sent+ttl proves an early expiry, without false
// alarms from polling or from a slow machine. How late etcd expires a lease
// depends on the machine's speed (the revoke is a raft proposal), so the
// upper bound is checked on the lease instead (checkLease), and the
// observed expiry is logged beside the documented bound.
type ttlObservation struct {
	key              string
	ttl              time.Duration
	sent             time.Time // before Exec
	lastPresentStart time.Time
	goneEnd          time.Time // zero while never seen gone
	readErrors       int
}

// observeTTL reads o.key every 20 ms until it is gone or until passes.
// Read errors (during a leader change) say nothing about the key and are
// counted only.
func observeTTL(ctx context.Context, client *clientv3.Client, o ttlObservation, until time.Time) ttlObservation {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(until) {
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		resp, err := client.Get(rctx, o.key, clientv3.WithCountOnly())
		cancel()
		end := time.Now()
		switch {
		case err != nil:
			o.readErrors++
		case resp.Count > 0:
			o.lastPresentStart = start
		default:
			o.goneEnd = end
			return o
		}
		select {
		case <-ctx.Done():
			return o
		case <-tick.C:
		}
	}
	return o
}

// ttlBound is WithTTL's documented bound on a healthy cluster:
// ceil(ttl + 0.5 s) seconds plus etcd's expiry check (up to 0.5 s).
func ttlBound(ttl time.Duration) time.Duration {
	return time.Duration(math.Ceil((ttl+time.Second/2).Seconds()))*time.Second + time.Second/2
}

// ttlPatience is how long past its documented bound a TTL key is
// polled before the test decides it never expires: generous, so that only
// a lease that is never revoked (kept alive, or far too long) fails.
const ttlPatience = 30 * time.Second

// requireTTLBound asserts that o's key was seen, lived at least its TTL, and
// expired; bound is the documented bound, logged beside what was seen.
func requireTTLBound(t *testing.T, o ttlObservation, bound time.Duration) {
	t.Helper()
	require.Falsef(t, o.lastPresentStart.IsZero(), "%s (TTL %v) was never seen", o.key, o.ttl)
	require.Falsef(t, o.goneEnd.IsZero(), "%s (TTL %v) still existed %v after Exec", o.key, o.ttl, o.lastPresentStart.Sub(o.sent))
	lived, seen := o.goneEnd.Sub(o.sent), o.lastPresentStart.Sub(o.sent)
	t.Logf("%s: TTL %v, last seen %v and gone by %v after Exec (documented bound %v, %d read errors)",
		o.key, o.ttl, seen.Round(time.Millisecond), lived.Round(time.Millisecond), bound, o.readErrors)
	assert.GreaterOrEqualf(t, lived, o.ttl, "%s expired early", o.key)
}

// checkLease asserts the upper half of WithTTL(ttl)'s bound on key's
// lease, which no machine's speed changes: the lease etcd granted has a TTL
// of at most ceil(ttl + 0.5 s), or etcd's minimum lease TTL where that is
// higher (measured with a grant of one second).
func checkLease(ctx context.Context, t *testing.T, client *clientv3.Client, key string, ttl time.Duration) {
	t.Helper()
	resp, err := client.Get(ctx, key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "%s is not there right after Exec", key)
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	require.NotZero(t, lease, "%s has no lease", key)
	ttlResp, err := client.TimeToLive(ctx, lease)
	require.NoError(t, err)
	probe, err := client.Grant(ctx, 1)
	require.NoError(t, err)
	_, err = client.Revoke(ctx, probe.ID)
	require.NoError(t, err)
	bound := max(int64(math.Ceil((ttl + time.Second/2).Seconds())), probe.TTL)
	t.Logf("%s: lease %x granted for %d s, %d s left (bound %d s, etcd's minimum %d s)", key, lease, ttlResp.GrantedTTL, ttlResp.TTL, bound, probe.TTL)
	assert.LessOrEqualf(t, ttlResp.GrantedTTL, bound, "%s: the lease of a %v TTL outlives ceil(ttl + 0.5 s)", key, ttl)
	assert.LessOrEqualf(t, ttlResp.TTL, ttlResp.GrantedTTL, "%s: the lease has more left than it was granted", key)
}

func TestEdgeTTLHoldsAcrossLeaderKill(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3})
	ctx := testContext(t)
	leader := clus.WaitLeader(t)
	follower := (leader + 1) % 3
	client := clus.Client(follower) // survives the leader's stop
	const ttl = 3 * time.Second

	t.Logf("phase 1: a key with TTL %v on a healthy cluster is gone within its bound", ttl)
	o := ttlObservation{key: "/edge/ttl/healthy", ttl: ttl, sent: time.Now()}
	require.NoError(t, storage.NewPutOp(client, o.key, &host{Name: "healthy"}).WithTTL(ttl).Exec(ctx))
	checkLease(ctx, t, client, o.key, ttl)
	o = observeTTL(ctx, client, o, o.sent.Add(ttlBound(ttl)+ttlPatience))
	requireTTLBound(t, o, ttlBound(ttl))

	t.Logf("phase 2: a key with TTL %v; stop the leader (member %d) halfway", ttl, leader)
	o = ttlObservation{key: "/edge/ttl/leader-killed", ttl: ttl, sent: time.Now()}
	require.NoError(t, storage.NewPutOp(client, o.key, &host{Name: "killed"}).WithTTL(ttl).Exec(ctx))
	checkLease(ctx, t, client, o.key, ttl)
	observed := make(chan ttlObservation, 1)
	// A new leader restarts every lease at its full TTL (ceil(3.5 s) = 4 s),
	// so the key may live up to about 1.5 s + election + 4 s + 0.5 s.
	go func() {
		observed <- observeTTL(ctx, client, o, o.sent.Add(ttl/2+ttlBound(ttl)+ttlPatience))
	}()
	time.Sleep(time.Until(o.sent.Add(ttl / 2))) // when the fault starts, not a synchronisation
	clus.Members[leader].Stop(t)
	killed := time.Now()
	var live []*integration.Member
	for i, m := range clus.Members {
		if i != leader {
			live = append(live, m)
		}
	}
	clus.WaitMembersForLeader(t, live)
	o = <-observed
	requireTTLBound(t, o, killed.Sub(o.sent)+ttlBound(ttl))
	// The new leader restarted the lease at its full TTL, so the key lives
	// at least that long after the kill: a read after the kill must find it.
	assert.Truef(t, o.lastPresentStart.After(killed), "the key was not seen after the leader's stop (last seen %v after Exec, stop at %v)",
		o.lastPresentStart.Sub(o.sent), killed.Sub(o.sent))

	t.Logf("phase 3: restart member %d", leader)
	require.NoError(t, clus.Members[leader].Restart(t))
	clus.WaitLeader(t)
}
