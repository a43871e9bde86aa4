package storage_test

// Benchmark of the cache's Get (cache.go), and the data sets and paged read
// the cache benchmarks share.

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// benchDataset writes data sets of small values for the cache benchmarks,
// each under its own prefix, once per size.
type benchDataset struct {
	ctx    context.Context
	client *clientv3.Client
	sets   map[int]map[string][]byte
	// kept holds a started cache per size, stopped when the benchmark
	// that made the data set ends.
	kept map[int]storage.Cache[*small]
}

// newBenchDataset returns an empty data set on client; the caches it keeps
// are stopped when b ends.
func newBenchDataset(b *testing.B, ctx context.Context, client *clientv3.Client) *benchDataset {
	d := &benchDataset{ctx: ctx, client: client, sets: make(map[int]map[string][]byte), kept: make(map[int]storage.Cache[*small])}
	b.Cleanup(func() {
		for _, c := range d.kept {
			c.Stop()
		}
	})
	return d
}

func (d *benchDataset) prefix(n int) string { return fmt.Sprintf("/bench/cache/n%d/", n) }

// items writes the data set of n items on first use and returns it by key.
func (d *benchDataset) items(b *testing.B, n int) map[string][]byte {
	if d.sets[n] == nil {
		d.sets[n] = benchPutSmall(b, d.ctx, d.client, d.prefix(n), n)
	}
	return d.sets[n]
}

// storedBytes returns the stored bytes plus keys of the data set of n items.
func (d *benchDataset) storedBytes(n int) int {
	var total int
	for k, v := range d.sets[n] {
		total += len(k) + len(v)
	}
	return total
}

// started returns a started cache of the data set of n items: the one kept
// for n, or a new one kept from now on.
func (d *benchDataset) started(b *testing.B, n int) storage.Cache[*small] {
	d.items(b, n)
	if c := d.kept[n]; c != nil {
		return c
	}
	c := d.newCache(n)
	benchNoErr(b, c.Start(d.ctx))
	d.keep(n, c)
	return c
}

// keep makes c, a started cache of the data set of n items, the one started
// returns.
func (d *benchDataset) keep(n int, c storage.Cache[*small]) {
	d.stopKept(n)
	d.kept[n] = c
}

// stopKept stops and forgets the cache kept for n, if any.
func (d *benchDataset) stopKept(n int) {
	if c := d.kept[n]; c != nil {
		c.Stop()
		delete(d.kept, n)
	}
}

func (d *benchDataset) newCache(n int) storage.Cache[*small] {
	prefix := d.prefix(n)
	return storage.NewCache(d.client, prefix, func(v *small) string { return prefix + v.ID })
}

// groupKeys returns the prefix of item i's group of ten, and its keys.
func (d *benchDataset) groupKeys(n, i int) (string, []string) {
	group := d.prefix(n) + fmt.Sprintf("g%05d/", i/10)
	keys := make([]string, 10)
	for j := range keys {
		keys[j] = group + "i" + strconv.Itoa(j)
	}
	return group, keys
}

// BenchmarkCache runs a cache's Get on a data set of 1,000 small values
// (the writing is setup, outside the timer). Start, memory and GetPrefix at
// sizes up to 1,000,000 are in bench_scale_test.go.
func BenchmarkCache(b *testing.B) {
	client, ctx := benchServer(b)
	d := newBenchDataset(b, ctx, client)

	// Get against json.Unmarshal of the item's stored bytes.
	b.Run("Get/items=1000", func(b *testing.B) {
		c := d.started(b, 1000)
		_, keys := d.groupKeys(1000, 500)
		data := d.items(b, 1000)[keys[0]]
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := c.Get(keys[0]).Exec(ctx)
					benchNoErr(b, err)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					v := new(small)
					benchNoErr(b, json.Unmarshal(data, v))
					v.SetVersion(1)
				})
			}},
		)
	})

}

// benchLiveHeap returns the live heap after a full collection.
func benchLiveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC() // the second collection frees what sync.Pools held
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// benchPagedRead is the cache's read done with clientv3: pages of 1000 keys,
// every page after the first pinned to its revision.
func benchPagedRead(ctx context.Context, client *clientv3.Client, prefix string) ([]*mvccpb.KeyValue, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	var kvs []*mvccpb.KeyValue
	var rev int64
	for start := prefix; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := client.Get(ctx, start, opts...)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return kvs, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
