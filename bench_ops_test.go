package storage_test

// Benchmarks of the single-key and prefix ops (ops_put.go, ops_get.go)
// against one server.

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

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
// key's version with 0, then the put (no else branch).
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
				resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Commit()
				benchRequireSucceeded(b, resp, err)
			})
		}},
	)
}

// BenchmarkUpdate updates one key with the version it has: a txn comparing
// the version, then the put (no else branch).
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
				resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", version)).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Commit()
				benchRequireSucceeded(b, resp, err)
				version++
			})
		}},
	)
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

// BenchmarkUpdateParallel is 64 goroutines (b.SetParallelism) each updating
// a key of its own with the version it has: throughput under contention for
// the client and the server. The raw txn compares the version and puts,
// the request the library sends.
func BenchmarkUpdateParallel(b *testing.B) {
	client, ctx := benchServer(b)
	const goroutines = 64
	parallel := func(b *testing.B, update func(k string, v *small) error) {
		prefix := benchUnique("/bench/updatepar/")
		var seq atomic.Int64
		b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
		storage.BenchParallel(b, func(pb *testing.PB) {
			k := prefix + strconv.FormatInt(seq.Add(1), 10)
			v := storage.NewBenchSmall("update", 1)
			if err := storage.NewCreateOp(client, k, v).WithUpdatedVersion().Exec(ctx); err != nil {
				b.Error(err)
				return
			}
			for pb.Next() {
				if err := update(k, v); err != nil {
					b.Error(err)
					return
				}
				v.SetVersion(v.Version() + 1)
			}
		})
	}
	benchImpls(b,
		benchImpl{"lib", func(b *testing.B) {
			parallel(b, func(k string, v *small) error { return storage.NewUpdateOp(client, k, v).Exec(ctx) })
		}},
		benchImpl{"raw", func(b *testing.B) {
			parallel(b, func(k string, v *small) error {
				data, err := json.Marshal(v)
				if err != nil {
					return err
				}
				resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", v.Version())).Then(clientv3.OpPut(k, string(data))).Commit()
				if err == nil && !resp.Succeeded {
					err = fmt.Errorf("update %s: compare failed", k)
				}
				return err
			})
		}},
	)
}
