package storage_test

// Benchmarks of value.go's encoding and decoding: no etcd, only the bytes.

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

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
