package storage_test

// Benchmark of a multi-op txn (txn.go).

import (
	"strconv"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// BenchmarkTxn commits ten, then 100, creates of new keys in one txn: a
// version compare and a put per key. The raw txn sends the same compares and
// puts and nothing else; the library's is the same request.
func BenchmarkTxn(b *testing.B) {
	client, ctx := benchServer(b)
	v := storage.NewBenchSmall("txn", 1)
	for _, n := range []int{10, 100} {
		b.Run("creates="+strconv.Itoa(n), func(b *testing.B) {
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
						cmps, puts := make([]clientv3.Cmp, n), make([]clientv3.Op, n)
						for j := range n {
							i++
							k := prefix + strconv.Itoa(i)
							cmps[j], puts[j] = clientv3.Compare(clientv3.Version(k), "=", 0), clientv3.OpPut(k, string(benchJSON(b, v)))
						}
						resp, err := client.Txn(ctx).If(cmps...).Then(puts...).Commit()
						benchRequireSucceeded(b, resp, err)
					})
				}},
			)
		})
	}
}
