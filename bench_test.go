package storage_test

// Benchmarks: one per operation, each with the library (impl=lib) beside raw
// clientv3 doing the same (impl=raw, or the other baselines named). A raw
// baseline sends the identical etcd request the library sends (same
// compares, options and else branch) and encodes with encoding/json, so the
// ratio of the two is the library's own cost. Compare them side by side with
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

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
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

func benchNoErr(b *testing.B, err error) {
	if err != nil {
		b.Helper()
		b.Fatal(err)
	}
}

func benchJSON(b *testing.B, v any) []byte {
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

// stdlibGzip is json.Marshal plus compress/gzip at its default level: what a
// caller without the library stores for a large value.
func stdlibGzip(v any, out *bytes.Buffer) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	out.Reset()
	zw := gzip.NewWriter(out)
	if _, err := zw.Write(data); err != nil {
		return err
	}
	return zw.Close()
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

// TestLargeEncodeReadableByStdlib checks what BenchmarkEncode/size=large
// compares: the library's stored bytes of the large payload are gzip that
// compress/gzip reads back to the same JSON, and they are at most 10%
// larger than compress/gzip's default level would make them.
func TestLargeEncodeReadableByStdlib(t *testing.T) {
	v := storage.NewBenchLarge()
	op, err := storage.NewPutOp(nil, "/large", v).ClientOp(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stored := op.ValueBytes()
	zr, err := gzip.NewReader(bytes.NewReader(stored))
	if err != nil {
		t.Fatalf("compress/gzip cannot read the stored bytes: %v", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("compress/gzip cannot read the stored bytes: %v", err)
	}
	want, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, want) {
		t.Fatalf("stored bytes inflate to %d bytes that differ from the value's JSON (%d bytes)", len(data), len(want))
	}
	var back storage.BenchLarge
	if err := json.Unmarshal(data, &back); err != nil || !reflect.DeepEqual(&back, v) {
		t.Fatalf("decoded value differs from the original (err %v)", err)
	}
	var std bytes.Buffer
	if err := stdlibGzip(v, &std); err != nil {
		t.Fatal(err)
	}
	if limit := std.Len() * 110 / 100; len(stored) > limit {
		t.Errorf("stored %d bytes, compress/gzip default %d: more than 10%% larger", len(stored), std.Len())
	}
	t.Logf("JSON %d bytes, stored %d, compress/gzip default %d", len(want), len(stored), std.Len())
}

// BenchmarkEncode builds a put's client op (JSON, gzip for the large value)
// against json.Marshal (plus compress/gzip at its default level for the
// large value), and for the small value also against json.Marshal plus
// clientv3.OpPut (raw-op), which builds the identical op. stored-B is the
// size of what is stored.
func BenchmarkEncode(b *testing.B) {
	ctx := context.Background()
	b.Run("size=small", func(b *testing.B) {
		v := storage.NewBenchSmall("g00042/i7", 42)
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.NewPutOp(nil, "/bench/small", v).ClientOp(ctx)
					benchNoErr(b, err)
				})
				b.ReportMetric(float64(len(libStored(b, v))), "stored-B")
			}},
			benchImpl{"raw", func(b *testing.B) {
				var data []byte
				storage.BenchLoop(b, func() {
					var err error
					data, err = json.Marshal(v)
					benchNoErr(b, err)
				})
				b.ReportMetric(float64(len(data)), "stored-B")
			}},
			// The same op built by hand: what clientv3 itself costs (copies of
			// key and value, an Op on the heap) is in both.
			benchImpl{"raw-op", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					data, err := json.Marshal(v)
					benchNoErr(b, err)
					_ = clientv3.OpPut("/bench/small", string(data))
				})
			}},
		)
	})
	b.Run("size=large", func(b *testing.B) {
		v := storage.NewBenchLarge()
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.NewPutOp(nil, "/bench/large", v).ClientOp(ctx)
					benchNoErr(b, err)
				})
				b.ReportMetric(float64(len(libStored(b, v))), "stored-B")
			}},
			benchImpl{"raw", func(b *testing.B) {
				var out bytes.Buffer
				storage.BenchLoop(b, func() {
					benchNoErr(b, stdlibGzip(v, &out))
				})
				b.ReportMetric(float64(out.Len()), "stored-B")
			}},
		)
	})
}

// BenchmarkDecode decodes a hand-built GetResponse (DecodeGetResponse)
// against json.Unmarshal (plus compress/gzip's reader for the large value).
// The stored bytes are the library's in both.
func BenchmarkDecode(b *testing.B) {
	kvOf := func(i int, value []byte) *mvccpb.KeyValue {
		key := fmt.Sprintf("/bench/decode/g%05d/i%d", i/10, i%10)
		return &mvccpb.KeyValue{Key: []byte(key), Value: value, Version: 3, CreateRevision: 10, ModRevision: int64(20 + i)}
	}
	smallKV := kvOf(42, libStored(b, storage.NewBenchSmall("g00004/i2", 42)))
	largeKV := kvOf(0, libStored(b, storage.NewBenchLarge()))
	many := &clientv3.GetResponse{}
	for i := range 1000 {
		many.Kvs = append(many.Kvs, kvOf(i, libStored(b, storage.NewBenchSmall(fmt.Sprintf("g%05d/i%d", i/10, i%10), i))))
	}

	b.Run("size=small", func(b *testing.B) {
		resp := &clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{smallKV}}
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.DecodeGetResponse[*small](resp)
					benchNoErr(b, err)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := rawDecode(smallKV)
					benchNoErr(b, err)
				})
			}},
		)
	})
	b.Run("size=large", func(b *testing.B) {
		resp := &clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{largeKV}}
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.DecodeGetResponse[*storage.BenchLarge](resp)
					benchNoErr(b, err)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					zr, err := gzip.NewReader(bytes.NewReader(largeKV.Value))
					benchNoErr(b, err)
					data, err := io.ReadAll(zr)
					benchNoErr(b, err)
					v := new(storage.BenchLarge)
					benchNoErr(b, json.Unmarshal(data, v))
					v.SetVersion(largeKV.Version)
				})
			}},
		)
	})
	b.Run("size=small-x1000", func(b *testing.B) {
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.DecodeGetResponse[*small](many)
					benchNoErr(b, err)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					rawDecodeAll(b, many.Kvs)
				})
			}},
		)
	})
}

// BenchmarkPut is an unconditional put: one plain Put request either way.
func BenchmarkPut(b *testing.B) {
	client, ctx := benchServer(b)
	v := storage.NewBenchSmall("put", 1)
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			storage.BenchLoop(b, func() {
				benchNoErr(b, storage.NewPutOp(client, "/bench/put/lib", v).Exec(ctx))
			})
		}},
		benchImpl{"raw", func(b *testing.B) {
			storage.BenchLoop(b, func() {
				_, err := client.Put(ctx, "/bench/put/raw", string(benchJSON(b, v)))
				benchNoErr(b, err)
			})
		}},
	)
}

// BenchmarkCreate creates a new key per iteration: a txn comparing the
// key's version with 0, whose else branch reads the key's metadata.
func BenchmarkCreate(b *testing.B) {
	client, ctx := benchServer(b)
	v := storage.NewBenchSmall("create", 1)
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			prefix, i := benchUnique("/bench/create/"), 0
			storage.BenchLoop(b, func() {
				i++
				benchNoErr(b, storage.NewCreateOp(client, prefix+strconv.Itoa(i), v).Exec(ctx))
			})
		}},
		benchImpl{"raw", func(b *testing.B) {
			prefix, i := benchUnique("/bench/create/"), 0
			storage.BenchLoop(b, func() {
				i++
				k := prefix + strconv.Itoa(i)
				resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).Commit()
				benchRequireSucceeded(b, resp, err)
			})
		}},
	)
}

func benchRequireSucceeded(b *testing.B, resp *clientv3.TxnResponse, err error) {
	b.Helper()
	benchNoErr(b, err)
	if !resp.Succeeded {
		b.Fatal("txn compare failed")
	}
}

// BenchmarkUpdate updates one key with the version it has: a txn comparing
// the version, whose else branch reads the key's metadata.
func BenchmarkUpdate(b *testing.B) {
	client, ctx := benchServer(b)
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			k := benchUnique("/bench/update/") + "k"
			v := storage.NewBenchSmall("update", 1)
			benchNoErr(b, storage.NewCreateOp(client, k, v).WithUpdatedVersion().Exec(ctx))
			storage.BenchLoop(b, func() {
				benchNoErr(b, storage.NewUpdateOp(client, k, v).Exec(ctx))
				v.SetVersion(v.Version() + 1)
			})
		}},
		benchImpl{"raw", func(b *testing.B) {
			k := benchUnique("/bench/update/") + "k"
			v := storage.NewBenchSmall("update", 1)
			benchNoErr(b, storage.NewCreateOp(client, k, v).WithUpdatedVersion().Exec(ctx))
			version := v.Version()
			storage.BenchLoop(b, func() {
				resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", version)).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).Commit()
				benchRequireSucceeded(b, resp, err)
				version++
			})
		}},
	)
}

// benchPutSmall stores n small values under prefix, grouped by ten
// (prefix/g00000/i0 ... i9), in txns of 100 puts, and returns them by key.
func benchPutSmall(b *testing.B, ctx context.Context, client *clientv3.Client, prefix string, n int) map[string][]byte {
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

// BenchmarkGet reads one small value.
func BenchmarkGet(b *testing.B) {
	client, ctx := benchServer(b)
	const k = "/bench/get/k"
	_, err := client.Put(ctx, k, string(benchJSON(b, storage.NewBenchSmall("get", 1))))
	benchNoErr(b, err)
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			storage.BenchLoop(b, func() {
				_, err := storage.NewGetOp[*small](client, k).Exec(ctx)
				benchNoErr(b, err)
			})
		}},
		benchImpl{"raw", func(b *testing.B) {
			storage.BenchLoop(b, func() {
				resp, err := client.Get(ctx, k)
				benchNoErr(b, err)
				_, err = rawDecode(resp.Kvs[0])
				benchNoErr(b, err)
			})
		}},
	)
}

// BenchmarkGetPrefix reads and decodes a prefix of 100 small values.
func BenchmarkGetPrefix(b *testing.B) {
	client, ctx := benchServer(b)
	const prefix = "/bench/getprefix/"
	benchPutSmall(b, ctx, client, prefix, 100)
	b.Run("items=100", func(b *testing.B) {
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					vs, err := storage.NewGetPrefixOp[*small](client, prefix).Exec(ctx)
					benchNoErr(b, err)
					benchLen(b, len(vs), 100)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
					benchNoErr(b, err)
					benchLen(b, len(rawDecodeAll(b, resp.Kvs)), 100)
				})
			}},
		)
	})
}

func benchLen(b *testing.B, got, want int) {
	if got != want {
		b.Helper()
		b.Fatalf("got %d values, want %d", got, want)
	}
}

// BenchmarkTxn commits ten creates of new keys in one txn: ten version
// compares, ten puts, and an else branch of ten keys-only reads.
func BenchmarkTxn(b *testing.B) {
	client, ctx := benchServer(b)
	v := storage.NewBenchSmall("txn", 1)
	const n = 10
	b.Run("creates=10", func(b *testing.B) {
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				prefix, i := benchUnique("/bench/txn/"), 0
				storage.BenchLoop(b, func() {
					ops := make([]storage.TxnOperation, n)
					for j := range ops {
						i++
						ops[j] = storage.NewCreateOp(client, prefix+strconv.Itoa(i), v)
					}
					benchNoErr(b, storage.NewTxn(client, ops...).Commit(ctx))
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				prefix, i := benchUnique("/bench/txn/"), 0
				storage.BenchLoop(b, func() {
					cmps, puts, gets := make([]clientv3.Cmp, n), make([]clientv3.Op, n), make([]clientv3.Op, n)
					for j := range n {
						i++
						k := prefix + strconv.Itoa(i)
						cmps[j], puts[j], gets[j] = clientv3.Compare(clientv3.Version(k), "=", 0), clientv3.OpPut(k, string(benchJSON(b, v))), clientv3.OpGet(k, clientv3.WithKeysOnly())
					}
					resp, err := client.Txn(ctx).If(cmps...).Then(puts...).Else(gets...).Commit()
					benchRequireSucceeded(b, resp, err)
				})
			}},
		)
	})
}

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

// BenchmarkClientSide runs the etcd ops above against a client whose KV
// answers at once with a canned response (no transport, no server): what is
// left is the client side of each op, the library's against raw clientv3's.
// Their difference is what the library adds to an op against a real server,
// free of that server's run-to-run spread; divided by the op's ns/op above
// it gives the library's share.
func BenchmarkClientSide(b *testing.B) {
	ctx := context.Background()
	v := storage.NewBenchSmall("stub", 1)
	stored := benchJSON(b, v)
	stub := func(b *testing.B, n int) *clientv3.Client {
		kvs := make([]*mvccpb.KeyValue, n)
		for i := range kvs {
			kvs[i] = &mvccpb.KeyValue{Key: []byte("/bench/stub/" + strconv.Itoa(i)), Value: stored, Version: 1, CreateRevision: 2, ModRevision: 2}
		}
		c := clientv3.NewCtxClient(context.Background())
		c.KV = &benchStubKV{kvs: kvs}
		b.Cleanup(func() { _ = c.Close() })
		return c
	}
	const k = "/bench/stub/0"
	b.Run("op=Put", func(b *testing.B) {
		client := stub(b, 0)
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() { benchNoErr(b, storage.NewPutOp(client, k, v).Exec(ctx)) })
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := client.Put(ctx, k, string(benchJSON(b, v)))
					benchNoErr(b, err)
				})
			}},
		)
	})
	b.Run("op=Create", func(b *testing.B) {
		client := stub(b, 0)
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() { benchNoErr(b, storage.NewCreateOp(client, k, v).Exec(ctx)) })
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).Commit()
					benchRequireSucceeded(b, resp, err)
				})
			}},
		)
	})
	b.Run("op=Update", func(b *testing.B) {
		client := stub(b, 0)
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() { benchNoErr(b, storage.NewUpdateOp(client, k, v).Exec(ctx)) })
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", v.Version())).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).Commit()
					benchRequireSucceeded(b, resp, err)
				})
			}},
		)
	})
	b.Run("op=Get", func(b *testing.B) {
		client := stub(b, 1)
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.NewGetOp[*small](client, k).Exec(ctx)
					benchNoErr(b, err)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					resp, err := client.Get(ctx, k)
					benchNoErr(b, err)
					_, err = rawDecode(resp.Kvs[0])
					benchNoErr(b, err)
				})
			}},
		)
	})
	b.Run("op=GetPrefix/items=100", func(b *testing.B) {
		client := stub(b, 100)
		const prefix = "/bench/stub/"
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					_, err := storage.NewGetPrefixOp[*small](client, prefix).Exec(ctx)
					benchNoErr(b, err)
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
					benchNoErr(b, err)
					rawDecodeAll(b, resp.Kvs)
				})
			}},
		)
	})
	b.Run("op=Txn/creates=10", func(b *testing.B) {
		client := stub(b, 0)
		keys := make([]string, 10)
		for i := range keys {
			keys[i] = "/bench/stub/" + strconv.Itoa(i)
		}
		benchImpls(b,
			benchImpl{"lib", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					ops := make([]storage.TxnOperation, len(keys))
					for j, k := range keys {
						ops[j] = storage.NewCreateOp(client, k, v)
					}
					benchNoErr(b, storage.NewTxn(client, ops...).Commit(ctx))
				})
			}},
			benchImpl{"raw", func(b *testing.B) {
				storage.BenchLoop(b, func() {
					cmps, puts, gets := make([]clientv3.Cmp, len(keys)), make([]clientv3.Op, len(keys)), make([]clientv3.Op, len(keys))
					for j, k := range keys {
						cmps[j], puts[j], gets[j] = clientv3.Compare(clientv3.Version(k), "=", 0), clientv3.OpPut(k, string(benchJSON(b, v))), clientv3.OpGet(k, clientv3.WithKeysOnly())
					}
					resp, err := client.Txn(ctx).If(cmps...).Then(puts...).Else(gets...).Commit()
					benchRequireSucceeded(b, resp, err)
				})
			}},
		)
	})
}

// benchStubKV is a clientv3.KV that answers every request at once: puts and
// deletes with a header, gets with kvs, txns as succeeded with a put
// response per op.
type benchStubKV struct {
	// KV is nil: it only supplies what the stub does not answer, such as
	// GetStream, which clientv3.KV gains in etcd 3.7 and the library never
	// calls. A call to one of them panics, so a benchmark cannot pass by it.
	clientv3.KV
	kvs []*mvccpb.KeyValue
}

var benchStubHeader = &etcdserverpb.ResponseHeader{Revision: 2}

func (s *benchStubKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	r, err := s.Do(ctx, clientv3.OpPut(key, val, opts...))
	return r.Put(), err
}

func (s *benchStubKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r, err := s.Do(ctx, clientv3.OpGet(key, opts...))
	return r.Get(), err
}

func (s *benchStubKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	r, err := s.Do(ctx, clientv3.OpDelete(key, opts...))
	return r.Del(), err
}

func (s *benchStubKV) Compact(context.Context, int64, ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return &clientv3.CompactResponse{Header: benchStubHeader}, nil
}

func (s *benchStubKV) Do(_ context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	switch {
	case op.IsPut():
		return (&clientv3.PutResponse{Header: benchStubHeader}).OpResponse(), nil
	case op.IsGet():
		return (&clientv3.GetResponse{Header: benchStubHeader, Kvs: s.kvs, Count: int64(len(s.kvs))}).OpResponse(), nil
	case op.IsDelete():
		return (&clientv3.DeleteResponse{Header: benchStubHeader}).OpResponse(), nil
	}
	return clientv3.OpResponse{}, errors.New("stub: unsupported op")
}

func (s *benchStubKV) Txn(context.Context) clientv3.Txn { return &benchStubTxn{} }

type benchStubTxn struct{ then []clientv3.Op }

func (t *benchStubTxn) If(...clientv3.Cmp) clientv3.Txn  { return t }
func (t *benchStubTxn) Else(...clientv3.Op) clientv3.Txn { return t }

func (t *benchStubTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = ops
	return t
}

func (t *benchStubTxn) Commit() (*clientv3.TxnResponse, error) {
	resp := &clientv3.TxnResponse{Header: benchStubHeader, Succeeded: true, Responses: make([]*etcdserverpb.ResponseOp, len(t.then))}
	for i := range t.then {
		resp.Responses[i] = &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponsePut{ResponsePut: &etcdserverpb.PutResponse{Header: benchStubHeader}}}
	}
	return resp, nil
}

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

// BenchmarkPutTTL is a stream of puts with a 10 s TTL over 100 keys: the
// library, which shares a lease among puts while it covers their TTL,
// against plain puts without a lease (raw), and against a grant per put
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
		b.RunParallel(func(pb *testing.PB) {
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
