package storage_test

// Benchmarks: one per operation, each with the library (impl=lib) beside raw
// clientv3 doing the same (impl=raw, or the other baselines named). A raw
// baseline sends the identical etcd request the library sends (same
// compares and options; neither sends an else branch) and encodes with
// encoding/json, so the ratio of the two is the library's own cost. Compare
// them side by side with
//
//	make bench   # 10 interleaved rounds into bench.txt, then:
//	go run golang.org/x/perf/cmd/benchstat@... -col /impl bench.txt
//	go run ./internal/benchratio bench.txt   # ratios of medians, targets
//
// docs/BENCHMARKS.md has the numbers. The payloads (storage.BenchSmall,
// storage.BenchLarge) are defined once, in bench_internal_test.go. Every
// benchmark that talks to etcd starts its own single-member server in this
// process (benchServer, with storagetest.New, which stops it when the
// benchmark ends); setup (servers, data sets) is outside the timer. Each
// loop runs through storage.BenchLoop, which also reports the process's CPU
// time per op (cpu-ns/op), and BenchmarkClientSide repeats the etcd ops
// against a stub KV to isolate what the library adds on the client.
//
// This file holds the helpers every benchmark shares. The benchmarks sit
// beside what they measure: bench_value_test.go (encode, decode),
// bench_ops_test.go, bench_lease_test.go (puts with a TTL), bench_txn_test.go,
// bench_watch_test.go, bench_cache_test.go, bench_cache_sync_test.go,
// bench_scale_test.go (the cache at 10,000 to 1,000,000 items; 1M only
// under make bench, which sets BENCH_1M=1), and bench_clientside_test.go
// (the ops against a stub KV).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

type small = storage.BenchSmall

// benchImpl is one implementation of a benchmarked operation: the library
// (lib) or a baseline.
type benchImpl struct {
	name string
	run  func(b *testing.B)
}

// benchRawFirst reverses the order of the impls (BENCH_RAW_FIRST=1): make
// bench sets it on every other round, so that whatever the first runner
// against a fresh server pays (warm-up, a colder heap) falls on lib and its
// baselines alike.
var benchRawFirst = os.Getenv("BENCH_RAW_FIRST") == "1"

// benchImpls runs each impl as the sub-benchmark impl=NAME, in the order
// given (lib first), or reversed under BENCH_RAW_FIRST=1.
func benchImpls(b *testing.B, impls ...benchImpl) {
	if benchRawFirst {
		slices.Reverse(impls)
	}
	for _, impl := range impls {
		b.Run("impl="+impl.name, impl.run)
	}
}

// benchSeq makes keys unique across the runs of a benchmark against one
// server (testing runs a sub-benchmark's function once per -count, all
// against its parent's server).
var benchSeq atomic.Int64

// benchUnique returns a fresh prefix under base.
func benchUnique(base string) string {
	return base + strconv.FormatInt(benchSeq.Add(1), 10) + "/"
}

func benchContext(b *testing.B) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	return ctx
}

// benchServer starts a single-member etcd for b (stopped when b ends) and
// warms it up with a few hundred puts and gets, so that the first
// sub-benchmark does not pay for the server's first requests.
//
// The server does not fsync (UnsafeNoFsync): on a shared VM the disk's fsync
// latency varied twofold from one sample to the next, hiding what the pairs
// measure, the client's cost, which the fsync only dilutes. Without it a put
// takes ~150 µs instead of ~500 µs, so the same library overhead is a three
// times larger share: the ratios are stricter, and steadier.
func benchServer(b *testing.B) (*clientv3.Client, context.Context) {
	client := storagetest.New(b, storagetest.WithServerConfig(func(cfg *embed.Config) { cfg.UnsafeNoFsync = true }))
	ctx := benchContext(b)
	data := string(benchJSON(b, storage.NewBenchSmall("warmup", 1)))
	for i := range 300 {
		k := "/bench/warmup/" + strconv.Itoa(i%10)
		_, err := client.Put(ctx, k, data)
		benchNoErr(b, err)
		_, err = client.Get(ctx, k)
		benchNoErr(b, err)
	}
	return client, ctx
}

func benchNoErr(b testing.TB, err error) {
	if err != nil {
		b.Helper()
		b.Fatal(err)
	}
}

func benchJSON(b testing.TB, v any) []byte {
	b.Helper()
	data, err := json.Marshal(v)
	benchNoErr(b, err)
	return data
}

// libStored returns the bytes the library stores for v.
func libStored[V storage.Value](b *testing.B, v V) []byte {
	b.Helper()
	op, err := storage.NewPutOp(nil, "/k", v).ClientOp(context.Background())
	benchNoErr(b, err)
	return op.ValueBytes()
}

// rawDecode is json.Unmarshal of one stored small value, with its version.
func rawDecode(kv *mvccpb.KeyValue) (*small, error) {
	v := new(small)
	err := json.Unmarshal(kv.Value, v)
	v.SetVersion(kv.Version)
	return v, err
}

func rawDecodeAll(b *testing.B, kvs []*mvccpb.KeyValue) []*small {
	out := make([]*small, 0, len(kvs))
	for _, kv := range kvs {
		v, err := rawDecode(kv)
		benchNoErr(b, err)
		out = append(out, v)
	}
	return out
}

func benchRequireSucceeded(b *testing.B, resp *clientv3.TxnResponse, err error) {
	b.Helper()
	benchNoErr(b, err)
	if !resp.Succeeded {
		b.Fatal("txn compare failed")
	}
}

func benchLen(b *testing.B, got, want int) {
	if got != want {
		b.Helper()
		b.Fatalf("got %d values, want %d", got, want)
	}
}

// benchPutSmall stores n small values under prefix, grouped by ten
// (prefix/g00000/i0 ... i9), in txns of 100 puts, and returns them by key.
func benchPutSmall(b testing.TB, ctx context.Context, client *clientv3.Client, prefix string, n int) map[string][]byte {
	b.Helper()
	items := make(map[string][]byte, n)
	var ops []clientv3.Op
	for i := range n {
		id := fmt.Sprintf("g%05d/i%d", i/10, i%10)
		data := benchJSON(b, storage.NewBenchSmall(id, i))
		items[prefix+id] = data
		ops = append(ops, clientv3.OpPut(prefix+id, string(data)))
	}
	const perTxn, workers = 100, 4
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for start := w * perTxn; start < len(ops); start += workers * perTxn {
				if _, err := client.Txn(ctx).Then(ops[start:min(start+perTxn, len(ops))]...).Commit(); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	benchNoErr(b, <-errc)
	return items
}
