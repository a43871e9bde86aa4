package storage_test

// BenchmarkCacheWatchFanOut: 100 subscriptions of one cache (impl=lib)
// against 100 WatchOps on the same prefix and client (impl=watchops), both
// delivering the same events to handlers that decode them. The cost that
// matters is CPU per delivered event, the in-process etcd server included,
// since a WatchOp costs the server a watcher of its own; and the memory
// each subscriber holds. Run it with
//
//	go test -run '^$' -bench BenchmarkCacheWatchFanOut -benchtime 100x -count 3 .

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

const (
	fanOutSubscribers = 100
	fanOutKeys        = 200 // items under the prefix before the subscribers start
	fanOutTxnPuts     = 10  // puts per op, one txn
)

// deliveries counts the events every handler of a benchmark received and
// signals once the count reaches want.
type deliveries struct {
	n       atomic.Int64
	want    atomic.Int64
	reached chan struct{} // cap 1
}

func (d *deliveries) handle(e *storage.Event[*host]) error {
	if e.Value == nil && e.Type == storage.EventTypePut {
		return fmt.Errorf("put %s without a value", e.Key)
	}
	if d.n.Add(1) == d.want.Load() {
		d.reached <- struct{}{}
	}
	return nil
}

// expect sets the count to wait for: n more than received so far.
func (d *deliveries) expect(n int64) { d.want.Store(d.n.Load() + n) }

func (d *deliveries) wait(b *testing.B) {
	select {
	case <-d.reached:
	case <-time.After(waitTimeout):
		b.Fatalf("%d of %d events delivered", d.n.Load(), d.want.Load())
	}
}

// processCPUTime is the CPU time the process has used, all threads.
func processCPUTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkCacheWatchFanOut(b *testing.B) {
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			benchFanOut(b, func(ctx context.Context, client *clientv3.Client, prefix string) func(int) storage.WatchOp[*host] {
				c := storage.NewCache(client, prefix, keyOfHost)
				if err := c.Start(ctx); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(c.Stop)
				return func(int) storage.WatchOp[*host] { return c.Watch("") }
			})
		}},
		benchImpl{"watchops", func(b *testing.B) {
			benchFanOut(b, func(_ context.Context, client *clientv3.Client, prefix string) func(int) storage.WatchOp[*host] {
				return func(int) storage.WatchOp[*host] { return storage.NewWatchPrefixOp[*host](client, prefix) }
			})
		}},
	)
}

// benchFanOut starts fanOutSubscribers watches made by setup's function on
// a prefix of fanOutKeys items, then times ops of one txn of fanOutTxnPuts
// puts, each until every watch delivered it. It reports the process's CPU
// time per delivered event and the live heap each subscriber added.
func benchFanOut(b *testing.B, setup func(ctx context.Context, client *clientv3.Client, prefix string) func(int) storage.WatchOp[*host]) {
	srv := newServer(b)
	client, writer := srv.Client(), newServerClient(b, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := benchUnique("/bench/fanout") + "/"
	for i := range fanOutKeys {
		if _, err := writer.Put(ctx, fmt.Sprintf("%sk%03d", prefix, i), rawHostJSON("bench", i)); err != nil {
			b.Fatal(err)
		}
	}
	newWatch := setup(ctx, client, prefix)
	d := &deliveries{reached: make(chan struct{}, 1)}
	heap := benchLiveHeap()
	d.expect(fanOutSubscribers * fanOutKeys)
	for i := range fanOutSubscribers {
		op := newWatch(i)
		if err := op.Watch(ctx, d.handle); err != nil {
			b.Fatal(err)
		}
		defer op.Close()
	}
	d.wait(b)
	perSubscriber := float64(benchLiveHeap()-heap) / fanOutSubscribers

	ops := make([]clientv3.Op, fanOutTxnPuts)
	round := 0
	cpu := processCPUTime(b)
	for b.Loop() {
		round++
		for j := range ops {
			ops[j] = clientv3.OpPut(fmt.Sprintf("%sk%03d", prefix, (round*fanOutTxnPuts+j)%fanOutKeys), rawHostJSON("bench", round))
		}
		d.expect(fanOutSubscribers * fanOutTxnPuts)
		if _, err := writer.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		d.wait(b)
	}
	cpu = processCPUTime(b) - cpu
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*fanOutSubscribers*fanOutTxnPuts), "cpu-ns/event")
	b.ReportMetric(perSubscriber, "B/subscriber")
}
