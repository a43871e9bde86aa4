package storage_test

// Benchmark of a multi-op txn (txn.go).

import (
	"strconv"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

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
