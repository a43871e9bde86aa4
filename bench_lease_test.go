package storage_test

// Benchmark of puts with a TTL: the lease sharing of lease.go.

import (
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// BenchmarkPutTTL is a stream of puts with a 10 s TTL over 100 keys: the
// library, which shares a lease among puts while it covers their TTL,
// against plain puts without a lease (raw), against puts carrying a lease
// granted before the loop (raw-lease), and against a grant per put
// (raw-grant). leases is the number of live leases at the end that the
// impl added.
func BenchmarkPutTTL(b *testing.B) {
	client, ctx := benchServer(b)
	const ttl = 10 * time.Second
	v := storage.NewBenchSmall("ttl", 1)
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = "/bench/ttl/" + strconv.Itoa(i)
	}
	// liveLeases returns the IDs of the server's live leases.
	liveLeases := func(b *testing.B) map[clientv3.LeaseID]bool {
		resp, err := client.Leases(ctx)
		benchNoErr(b, err)
		ids := make(map[clientv3.LeaseID]bool, len(resp.Leases))
		for _, l := range resp.Leases {
			ids[l.ID] = true
		}
		return ids
	}
	// reportLeases reports the live leases that were not live before the
	// impl ran: those of another impl that ran earlier do not count.
	reportLeases := func(b *testing.B, before map[clientv3.LeaseID]bool) {
		n := 0
		for id := range liveLeases(b) {
			if !before[id] {
				n++
			}
		}
		b.ReportMetric(float64(n), "leases")
	}
	// Warm the server up with the work of the loops, puts attaching the keys
	// to a lease, outside the timers: whichever impl ran first against a
	// fresh server measured up to a quarter slower than it did later.
	warm, err := client.Grant(ctx, 3600)
	benchNoErr(b, err)
	data := string(benchJSON(b, v))
	for i := range 2000 {
		_, err := client.Put(ctx, keys[i%len(keys)], data, clientv3.WithLease(warm.ID))
		benchNoErr(b, err)
	}
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			i, before := 0, liveLeases(b)
			storage.BenchLoop(b, func() {
				i++
				benchNoErr(b, storage.NewPutOp(client, keys[i%len(keys)], v).WithTTL(ttl).Exec(ctx))
			})
			reportLeases(b, before)
		}},
		benchImpl{"raw", func(b *testing.B) {
			i := 0
			storage.BenchLoop(b, func() {
				i++
				_, err := client.Put(ctx, keys[i%len(keys)], string(benchJSON(b, v)))
				benchNoErr(b, err)
			})
		}},
		benchImpl{"raw-lease", func(b *testing.B) {
			// The fair baseline: etcd's lease work (attaching each key to a
			// lease) is in both, and the lease is granted before the loop.
			lease, err := client.Grant(ctx, 3600)
			benchNoErr(b, err)
			i := 0
			storage.BenchLoop(b, func() {
				i++
				_, err := client.Put(ctx, keys[i%len(keys)], string(benchJSON(b, v)), clientv3.WithLease(lease.ID))
				benchNoErr(b, err)
			})
		}},
		benchImpl{"raw-grant", func(b *testing.B) {
			i, before := 0, liveLeases(b)
			storage.BenchLoop(b, func() {
				i++
				lease, err := client.Grant(ctx, 11) // ceil(ttl + 0.5 s), as the library grants
				benchNoErr(b, err)
				_, err = client.Put(ctx, keys[i%len(keys)], string(benchJSON(b, v)), clientv3.WithLease(lease.ID))
				benchNoErr(b, err)
			})
			reportLeases(b, before)
		}},
	)
}
