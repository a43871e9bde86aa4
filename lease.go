package storage

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// How TTL puts share leases (the contract is PutOp.WithTTL's doc).
//
// The bound of WithTTL(d) holds for a new or a reused lease alike. The lease
// has a TTL of ceil(d + 0.5s) seconds, so the key is gone at most that long
// after Exec returns, plus etcd's expiry check. It is handed out only while
// it has at least d plus leaseMargin left, counted from before its grant was
// sent, so the key lives at least d. That is counted from when the
// lease is handed out, which is after Exec or Commit was called, not from when
// the request is sent: a Txn builds its ops one after another, and a later
// op's lease grant delays the request that carries an earlier op's lease.
// Leases are grouped by their TTL in seconds; each group holds one current
// lease, and the leases it replaced expire by themselves, so live leases stay
// bounded.

// leaseMargin covers the time between handing out a lease and the server
// receiving the put that uses it.
const leaseMargin = 100 * time.Millisecond

// maxLeaseTTL is etcd's maximum lease TTL in seconds (MaxLeaseTTL in
// go.etcd.io/etcd/server/v3/lease, v3.6 and v3.7); a larger grant is refused.
// In nanoseconds it fits a time.Duration with room for the half second of
// headroom and leaseMargin, so no lease arithmetic below overflows.
const maxLeaseTTL = 9_000_000_000

// leaseManager holds the current lease of each TTL group for one client.
type leaseManager struct {
	granting chan struct{} // cap 1: held while a grant is in flight

	// leases maps a TTL group to its current lease. The map is never
	// modified: writers, under mu, store a changed copy, so that the puts
	// that find a current lease (nearly all) read it without a lock.
	mu     sync.Mutex
	leases atomic.Pointer[map[int64]grantedLease]
}

type grantedLease struct {
	id      clientv3.LeaseID
	expires time.Time // at the latest: grant sent + the TTL etcd granted
}

// leaseManagers maps a client to its leaseManager. Clients are held weakly
// and their entries removed once they are collected, so the map never keeps
// a client alive.
var leaseManagers sync.Map // weak.Pointer[clientv3.Client] -> *leaseManager

func leasesOf(client *clientv3.Client) *leaseManager {
	key := weak.Make(client)
	if m, ok := leaseManagers.Load(key); ok {
		return m.(*leaseManager)
	}
	m, loaded := leaseManagers.LoadOrStore(key, &leaseManager{granting: make(chan struct{}, 1)})
	if !loaded {
		runtime.AddCleanup(client, func(k weak.Pointer[clientv3.Client]) { leaseManagers.Delete(k) }, key)
	}
	return m.(*leaseManager)
}

// grantLease returns a lease for a key that must live at least ttl from now
// and at most ceil(ttl + 0.5s) seconds: a current one when it still covers
// ttl, else a new one. etcd counts lease TTLs in whole seconds from when it
// applies the grant; the half second of headroom lets a lease serve later
// puts.
func grantLease(ctx context.Context, client *clientv3.Client, ttl time.Duration) (clientv3.LeaseID, error) {
	seconds := leaseSeconds(ttl)
	m := leasesOf(client)
	if id, ok := m.current(seconds, ttl); ok {
		return id, nil
	}
	// One grant at a time per client: the puts waiting meanwhile reuse it.
	select {
	case m.granting <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("grant lease of %ds: %w", seconds, ctx.Err())
	}
	defer func() { <-m.granting }()
	if id, ok := m.current(seconds, ttl); ok {
		return id, nil
	}
	sent := time.Now()
	resp, err := client.Grant(ctx, seconds)
	if err != nil {
		return 0, fmt.Errorf("grant lease of %ds: %w", seconds, err)
	}
	observeLeaseGrant()
	m.mu.Lock()
	defer m.mu.Unlock()
	leases := m.copyLeasesLocked()
	// etcd grants at most maxLeaseTTL; min keeps the product in range
	// whatever a server answers.
	leases[seconds] = grantedLease{id: resp.ID, expires: sent.Add(time.Duration(min(resp.TTL, maxLeaseTTL)) * time.Second)}
	m.leases.Store(&leases)
	return resp.ID, nil
}

// current returns the group's lease if it has at least ttl left.
func (m *leaseManager) current(seconds int64, ttl time.Duration) (clientv3.LeaseID, bool) {
	leases := m.leases.Load()
	if leases == nil {
		return 0, false
	}
	l, ok := (*leases)[seconds]
	if !ok || time.Until(l.expires) < ttl+leaseMargin {
		return 0, false
	}
	return l.id, true
}

// forget drops the leases with these ids from their groups, after etcd said they are
// gone (revoked by someone else, or lost with a restored cluster). A group
// that holds another lease by now keeps it: a put that failed with the old
// lease must not drop the one a concurrent retry has just granted.
func (m *leaseManager) forget(ids []clientv3.LeaseID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	leases := m.copyLeasesLocked()
	for seconds, l := range leases {
		if slices.Contains(ids, l.id) {
			delete(leases, seconds)
		}
	}
	m.leases.Store(&leases)
}

// copyLeasesLocked returns a copy of the leases to change and store.
func (m *leaseManager) copyLeasesLocked() map[int64]grantedLease {
	if leases := m.leases.Load(); leases != nil {
		return maps.Clone(*leases)
	}
	return make(map[int64]grantedLease)
}

// leaseSeconds is ceil(ttl + 0.5s) in seconds, at most maxLeaseTTL (a ttl
// within the last half second below it loses its headroom, not its bound).
// ttl must be positive and at most maxLeaseTTL seconds (see checkTTL).
func leaseSeconds(ttl time.Duration) int64 {
	return min(int64((ttl+time.Second/2+time.Second-1)/time.Second), maxLeaseTTL)
}
