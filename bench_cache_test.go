package storage_test

// Benchmarks of the cache (cache.go): reads, Start and memory on data sets
// of up to 100,000 values.

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
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
}

func (d *benchDataset) prefix(n int) string { return fmt.Sprintf("/bench/cache/n%d/", n) }

// items writes the data set of n items on first use and returns it by key.
func (d *benchDataset) items(b *testing.B, n int) map[string][]byte {
	if d.sets[n] == nil {
		d.sets[n] = benchPutSmall(b, d.ctx, d.client, d.prefix(n), n)
	}
	return d.sets[n]
}

// started returns a started cache of the data set of n items, stopped when
// b ends.
func (d *benchDataset) started(b *testing.B, n int) storage.Cache[*small] {
	d.items(b, n)
	c := d.newCache(n)
	benchNoErr(b, c.Start(d.ctx))
	b.Cleanup(c.Stop)
	return c
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

// BenchmarkCache runs the cache's reads, its Start and its memory use on
// data sets of 1,000 to 100,000 small values written to one server (the
// writing is setup, outside the timers).
func BenchmarkCache(b *testing.B) {
	client, ctx := benchServer(b)
	d := &benchDataset{ctx: ctx, client: client, sets: make(map[int]map[string][]byte)}

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

	// GetPrefix of ten items against ten Gets, and against a map of stored
	// bytes scanned with strings.HasPrefix, matches decoded and sorted.
	for _, n := range []int{1000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("GetPrefix/items=%d", n), func(b *testing.B) {
			c := d.started(b, n)
			items := d.items(b, n)
			group, keys := d.groupKeys(n, n/2)
			benchImpls(b,
				benchImpl{"lib", func(b *testing.B) {
					storage.BenchLoop(b, func() {
						vs, err := c.GetPrefix(group).Exec(ctx)
						benchNoErr(b, err)
						benchLen(b, len(vs), 10)
					})
				}},
				benchImpl{"gets", func(b *testing.B) {
					storage.BenchLoop(b, func() {
						vs := make([]*small, len(keys))
						for i, k := range keys {
							var err error
							vs[i], err = c.Get(k).Exec(ctx)
							benchNoErr(b, err)
						}
					})
				}},
				benchImpl{"mapscan", func(b *testing.B) {
					type found struct {
						key string
						v   *small
					}
					storage.BenchLoop(b, func() {
						var matches []found
						for k, data := range items {
							if strings.HasPrefix(k, group) {
								v := new(small)
								benchNoErr(b, json.Unmarshal(data, v))
								matches = append(matches, found{k, v})
							}
						}
						slices.SortFunc(matches, func(x, y found) int { return strings.Compare(x.key, y.key) })
						vs := make([]*small, len(matches))
						for i, m := range matches {
							vs[i] = m.v
						}
						benchLen(b, len(vs), 10)
					})
				}},
			)
		})
	}

	// Start (a paged read at one revision, then a watch) against the same
	// paged read and a decode of every value.
	b.Run("Start/items=100000", func(b *testing.B) {
		const n = 100_000
		d.items(b, n)
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				c := d.newCache(n)
				storage.BenchLoop(b, func() {
					benchNoErr(b, c.Start(ctx))
					b.StopTimer()
					c.Stop()
					b.StartTimer()
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					kvs, err := benchPagedRead(ctx, d.client, d.prefix(n))
					benchNoErr(b, err)
					benchLen(b, len(rawDecodeAll(b, kvs)), n)
				})
			}},
		)
	})

	// Memory: live heap held by a started cache of 100,000 small values,
	// per item, beside the stored bytes plus key per item.
	b.Run("Memory/items=100000", func(b *testing.B) {
		const n = 100_000
		var stored int
		for k, v := range d.items(b, n) {
			stored += len(k) + len(v)
		}
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				c := d.newCache(n)
				var perItem float64
				storage.BenchLoop(b, func() {
					before := benchLiveHeap()
					benchNoErr(b, c.Start(ctx))
					perItem = float64(benchLiveHeap()-before) / n
					c.Stop()
				})
				b.ReportMetric(perItem, "B/item")
				b.ReportMetric(float64(stored)/n, "stored-B/item")
				b.ReportMetric(perItem/(float64(stored)/n), "x-stored")
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
