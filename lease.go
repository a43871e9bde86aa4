package storage

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// grantLease returns a lease for a key that must live at least ttl from now.
// etcd counts lease TTLs in whole seconds from when it applies the grant, and
// the put follows the grant by a round trip, so the lease gets half a second
// of headroom: ceil(ttl + 0.5s) seconds, the bound documented on WithTTL.
func grantLease(ctx context.Context, client *clientv3.Client, ttl time.Duration) (clientv3.LeaseID, error) {
	seconds := leaseSeconds(ttl)
	resp, err := client.Grant(ctx, seconds)
	if err != nil {
		return 0, fmt.Errorf("grant lease of %ds: %w", seconds, err)
	}
	return resp.ID, nil
}

// leaseSeconds is ceil(ttl + 0.5s) in seconds.
func leaseSeconds(ttl time.Duration) int64 {
	return int64((ttl + time.Second/2 + time.Second - 1) / time.Second)
}
