package storage_test

// Benchmark of the cache's consistent read (cache_sync.go).

import (
	"fmt"
	"runtime"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// BenchmarkCacheSync is a consistent read of 100 of 10,000 small values by
// 64 concurrent readers: Sync, then GetPrefix from the cache (lib), against
// a linearizable range of the same 100 keys plus decoding (raw), which is
// what a caller that must not read stale data does without Sync. reads/op
// is the revision reads Sync sent per call (shared among the readers).
func BenchmarkCacheSync(b *testing.B) {
	rc := &rpcCounter{}
	client := storagetest.New(b,
		storagetest.WithServerConfig(func(cfg *embed.Config) { cfg.UnsafeNoFsync = true }),
		storagetest.WithClientConfig(func(cfg *clientv3.Config) { cfg.DialOptions = rc.dialOptions() }))
	ctx := benchContext(b)
	const prefix, groups, perGroup = "/bench/sync/", 100, 100
	var ops []clientv3.Op
	for i := range groups * perGroup {
		id := fmt.Sprintf("g%03d/i%03d", i/perGroup, i%perGroup)
		ops = append(ops, clientv3.OpPut(prefix+id, string(benchJSON(b, storage.NewBenchSmall(id, i)))))
		if len(ops) == 100 {
			_, err := client.Txn(ctx).Then(ops...).Commit()
			benchNoErr(b, err)
			ops = ops[:0]
		}
	}
	c := storage.NewCache(client, prefix, func(v *small) string { return prefix + v.ID })
	benchNoErr(b, c.Start(ctx))
	b.Cleanup(c.Stop)
	group := prefix + "g050/"
	const readers = 64
	parallel := func(b *testing.B, body func() error) {
		b.SetParallelism(max(1, readers/runtime.GOMAXPROCS(0)))
		rc.ranges.Store(0)
		storage.BenchParallel(b, func(pb *testing.PB) {
			for pb.Next() {
				if err := body(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(rc.ranges.Load())/float64(b.N), "reads/op")
	}
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			parallel(b, func() error {
				if err := c.Sync(ctx); err != nil {
					return err
				}
				vs, err := c.GetPrefix(group).Exec(ctx)
				if err == nil && len(vs) != perGroup {
					err = fmt.Errorf("got %d items, want %d", len(vs), perGroup)
				}
				return err
			})
		}},
		benchImpl{"raw", func(b *testing.B) {
			parallel(b, func() error {
				resp, err := client.Get(ctx, group, clientv3.WithPrefix())
				if err != nil {
					return err
				}
				vs := make([]*small, len(resp.Kvs))
				for i, kv := range resp.Kvs {
					if vs[i], err = rawDecode(kv); err != nil {
						return err
					}
				}
				if len(vs) != perGroup {
					return fmt.Errorf("got %d items, want %d", len(vs), perGroup)
				}
				return nil
			})
		}},
	)
}
