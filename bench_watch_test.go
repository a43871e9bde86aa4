package storage_test

// Benchmarks of the watch (watch.go): throughput of a prefix watch, and
// delivery latency on a quiet and on a loaded client.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// BenchmarkWatchPrefix delivers a txn of 100 puts to a prefix watch: the
// library's WatchPrefixOp (handler counting events) against a raw clientv3
// watch with the same options (require leader, from the read's revision + 1,
// progress notifications, fragments) whose receiver decodes each event with
// json.Unmarshal. Each iteration commits the txn and waits for its 100th
// event; the txn is the same raw request on both sides.
func BenchmarkWatchPrefix(b *testing.B) {
	client, ctx := benchServer(b)
	const n = 100
	// writer returns the txn of n puts under a fresh prefix.
	writer := func(b *testing.B) (string, func()) {
		prefix := benchUnique("/bench/watch/")
		ops := make([]clientv3.Op, n)
		for i := range ops {
			ops[i] = clientv3.OpPut(prefix+strconv.Itoa(i), string(benchJSON(b, storage.NewBenchSmall(strconv.Itoa(i), i))))
		}
		return prefix, func() {
			_, err := client.Txn(ctx).Then(ops...).Commit()
			benchNoErr(b, err)
		}
	}
	b.Run("events=100", func(b *testing.B) {
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				prefix, write := writer(b)
				got := make(chan struct{}, 1)
				count := 0 // used by the watch's goroutine only
				w := storage.NewWatchPrefixOp[*small](client, prefix)
				benchNoErr(b, w.Watch(ctx, func(e *storage.Event[*small]) error {
					if e.Type != storage.EventTypePut {
						return fmt.Errorf("unexpected %s event on %s: %v", e.Type, e.Key, e.Err)
					}
					if count++; count%n == 0 {
						got <- struct{}{}
					}
					return nil
				}))
				defer w.Close()
				storage.BenchLoop(b, func() {
					write()
					select {
					case <-got:
					case err := <-w.Error():
						b.Fatal(err)
					}
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				prefix, write := writer(b)
				got := make(chan struct{}, 1)
				errc := make(chan error, 1)
				wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
				// The library's initial read: the first page of the prefix.
				resp, err := client.Get(ctx, prefix, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(1000))
				benchNoErr(b, err)
				wch := client.Watch(wctx, prefix, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithRev(resp.Header.Revision+1), clientv3.WithProgressNotify(), clientv3.WithFragment())
				done := make(chan struct{})
				go func() {
					defer close(done)
					count := 0
					for resp := range wch {
						if err := resp.Err(); err != nil {
							errc <- err
							return
						}
						for _, ev := range resp.Events {
							if _, err := rawDecode(ev.Kv); err != nil {
								errc <- err
								return
							}
							if count++; count%n == 0 {
								got <- struct{}{}
							}
						}
					}
				}()
				defer func() { cancel(); <-done }()
				storage.BenchLoop(b, func() {
					write()
					select {
					case <-got:
					case err := <-errc:
						b.Fatal(err)
					}
				})
			}},
		)
	})
}

// BenchmarkWatchDeliveryLatency measures the time from a write to its
// event's arrival (at the handler of a WatchOp, or at the receiver of a raw
// clientv3 watch beside it), on a quiet client and on one that loops 3 MiB
// prefix reads. The writer uses a client of its own.
func BenchmarkWatchDeliveryLatency(b *testing.B) {
	for _, bc := range []struct {
		name       string
		heavy, raw bool
	}{
		{name: "idle"},
		{name: "heavy-reads", heavy: true},
		{name: "clientv3/idle", raw: true},
		{name: "clientv3/heavy-reads", heavy: true, raw: true},
	} {
		b.Run(bc.name, func(b *testing.B) { benchDelivery(b, bc.heavy, bc.raw) })
	}
}

func benchDelivery(b *testing.B, heavy, raw bool) {
	srv := newServer(b)
	client, writer := srv.Client(), newServerClient(b, srv)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	const prefix, blobs = "/bench/latency/", "/bench/blobs/"
	arrived := make(chan int)
	deliver := func(port int) {
		select {
		case arrived <- port:
		case <-ctx.Done():
		}
	}
	if raw {
		wch := client.Watch(ctx, prefix, clientv3.WithPrefix())
		wg.Go(func() {
			for resp := range wch {
				for _, ev := range resp.Events {
					var h host
					if err := json.Unmarshal(ev.Kv.Value, &h); err == nil {
						deliver(h.Port)
					}
				}
			}
		})
	} else {
		op := storage.NewWatchPrefixOp[*host](client, prefix)
		if err := op.Watch(ctx, func(e *storage.Event[*host]) error { deliver(e.Value.Port); return nil }); err != nil {
			b.Fatal(err)
		}
		defer op.Close()
	}
	if heavy {
		loadBlobs(ctx, b, writer, blobs, 200, 16<<10)
		var reads atomic.Int64
		wg.Go(func() { _ = readLoop(ctx, client, blobs, &reads) })
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := writer.Put(ctx, prefix+"k", rawHostJSON("bench", i)); err != nil {
			b.Fatal(err)
		}
		select {
		case port := <-arrived:
			if port != i {
				b.Fatalf("got write %d, want %d", port, i)
			}
		case <-time.After(10 * time.Second):
			b.Fatalf("write %d never arrived", i)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
}
