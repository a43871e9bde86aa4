package storage_test

// Benchmarks of the cache at the sizes control planes reach (cache.go,
// watch_read.go): Start, and the memory a started cache holds, at 10,000 to
// 1,000,000 small values, and GetPrefix of ten at 1,000 to 1,000,000. The 1M
// data set takes a while to write and to read (see benchScale1M), so it is
// used only when BENCH_1M=1, which make bench sets; without it the sizes
// stop at 100,000.

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdkit/storage"
)

// benchScale1M adds the sizes of 1,000,000 items (BENCH_1M=1, set by make
// bench). Writing them, once per process, takes 30 to 50 s on the 2-core
// machine of docs/BENCHMARKS.md; a Start at 1M takes over a minute, raw or
// not (docs/BENCHMARKS.md says why).
var benchScale1M = os.Getenv("BENCH_1M") == "1"

// benchScaleSizes returns sizes, with 1,000,000 under BENCH_1M=1.
func benchScaleSizes(sizes ...int) []int {
	if benchScale1M {
		sizes = append(sizes, 1_000_000)
	}
	return sizes
}

// BenchmarkScale runs Start (with memory) and GetPrefix of a cache on data sets
// of up to 1,000,000 small values (about 150 bytes of JSON each) written to
// one server. Writing a data set is setup, outside the timers, done once
// per process; the log says how long it took.
func BenchmarkScale(b *testing.B) {
	client, ctx := benchServer(b)
	d := newBenchDataset(b, ctx, client)
	items := func(b *testing.B, n int) map[string][]byte {
		if d.sets[n] == nil {
			start := time.Now()
			d.items(b, n)
			b.Logf("wrote %d items in %v", n, time.Since(start).Round(time.Millisecond))
		}
		return d.sets[n]
	}

	// Start (a paged read at one revision, then a watch) against the same
	// paged read with clientv3, holding what it read. Each iteration stops
	// the cache the one before started; the last one stays started and
	// serves GetPrefix and Memory below, which spares the 1M rounds two more
	// Starts.
	for _, n := range benchScaleSizes(10_000, 100_000) {
		b.Run(fmt.Sprintf("Start/items=%d", n), func(b *testing.B) {
			items(b, n)
			benchImpls(b,
				benchImpl{"lib", func(b *testing.B) {
					// Kept from now on (one kept by an earlier -count run is
					// stopped): stopped when b ends, also should Start fail.
					c := d.newCache(n)
					d.keep(n, c)
					storage.BenchLoop(b, func() {
						b.StopTimer()
						c.Stop()
						b.StartTimer()
						benchNoErr(b, c.Start(ctx))
					})
				}},
				benchImpl{"raw", func(b *testing.B) {
					storage.BenchLoop(b, func() {
						kvs, err := benchPagedRead(ctx, client, d.prefix(n))
						benchNoErr(b, err)
						benchLen(b, len(kvs), n)
					})
				}},
			)
		})
	}

	// GetPrefix of ten items, O(log n + 10): flat from 1,000 items on.
	// Against ten Gets, and against a map of stored bytes scanned with
	// strings.HasPrefix, matches decoded and sorted.
	for _, n := range benchScaleSizes(1000, 10_000, 100_000) {
		b.Run(fmt.Sprintf("GetPrefix/items=%d", n), func(b *testing.B) {
			items := items(b, n)
			c := d.started(b, n)
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

	// Memory: the live heap a started cache holds per item, beside the
	// stored bytes plus key per item. It is what Stop frees: the live heap
	// with the cache that Start left started, less the live heap once it
	// is stopped. Taken around Stop, not around Start, so that what the
	// server frees meanwhile does not count (its pending bbolt transaction
	// holds up to 10,000 of the data set's writes until the backend
	// commits, which a baseline taken before Start would count and later
	// miss). No Start, hence nothing to time: the loop is empty.
	for _, n := range benchScaleSizes(10_000, 100_000) {
		b.Run(fmt.Sprintf("Memory/items=%d", n), func(b *testing.B) {
			benchImpls(b,
				benchImpl{"lib", func(b *testing.B) {
					d.started(b, n)
					with := benchLiveHeap()
					d.stopKept(n)
					perItem := float64(with-benchLiveHeap()) / float64(n)
					for b.Loop() { //nolint:revive // nothing to time: the figures are the heap's
					}
					stored := float64(d.storedBytes(n)) / float64(n)
					b.ReportMetric(perItem, "B/item")
					b.ReportMetric(stored, "stored-B/item")
					b.ReportMetric(perItem/stored, "x-stored")
				}},
			)
		})
	}
}
