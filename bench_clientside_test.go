package storage_test

// The etcd ops' benchmarks repeated against a stub KV: the client side
// alone, without transport or server.

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// BenchmarkClientSide runs the etcd ops of bench_ops_test.go and
// bench_txn_test.go against a client whose KV answers at once with a canned
// response (no transport, no server). What is left is the client side of
// each op, the library's against raw clientv3's. Their difference is what
// the library adds to an op against a real server, free of that server's
// run-to-run spread; divided by the op's ns/op there it gives the library's
// share.
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
					resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", 0)).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Commit()
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
					resp, err := client.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), "=", v.Version())).Then(clientv3.OpPut(k, string(benchJSON(b, v)))).Commit()
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
					cmps, puts := make([]clientv3.Cmp, len(keys)), make([]clientv3.Op, len(keys))
					for j, k := range keys {
						cmps[j], puts[j] = clientv3.Compare(clientv3.Version(k), "=", 0), clientv3.OpPut(k, string(benchJSON(b, v)))
					}
					resp, err := client.Txn(ctx).If(cmps...).Then(puts...).Commit()
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

func (t *benchStubTxn) If(...clientv3.Cmp) clientv3.Txn { return t }

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
