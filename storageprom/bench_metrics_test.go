package storageprom_test

// The cost of the metrics: Put and Cache Get with the adapter registered
// (impl=lib) beside the same op with no adapter (impl=none: the hooks load
// an atomic pointer and find nobody) and beside raw clientv3 or
// encoding/json (impl=raw). The cost of the idle hooks themselves is
// measured by the root package's BenchmarkPut and BenchmarkCache/Get before
// and after the hooks were added (docs/BENCHMARKS.md).
//
//	go test -run '^$' -bench . -count 10 ./storageprom/ > metrics.txt
//	go run ./internal/benchratio metrics.txt

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storageprom"
	"github.com/etcdkit/storage/storagetest"
)

// benchClient starts an etcd for b that does not fsync: its latency would
// hide the client's cost.
func benchClient(b *testing.B) (*clientv3.Client, context.Context) {
	b.Helper()
	return storagetest.New(b, storagetest.WithServerConfig(func(cfg *embed.Config) { cfg.UnsafeNoFsync = true })), b.Context()
}

// withAndWithoutAdapter runs body with the adapter registered on a fresh registry,
// and without any.
func withAndWithoutAdapter(b *testing.B, body func(b *testing.B), raw func(b *testing.B)) {
	b.Run("impl=lib", func(b *testing.B) {
		storageprom.RegisterTB(b, prometheus.NewRegistry())
		body(b)
	})
	b.Run("impl=none", body)
	b.Run("impl=raw", raw)
}

func BenchmarkMetricsPut(b *testing.B) {
	client, ctx := benchClient(b)
	v := &host{Name: "bench"}
	withAndWithoutAdapter(b, func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := storage.NewPutOp(client, "/bench/put", v).Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}, func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			data, err := json.Marshal(v)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := client.Put(ctx, "/bench/put", string(data)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMetricsCacheGet(b *testing.B) {
	client, ctx := benchClient(b)
	for i := range 1000 {
		name := strconv.Itoa(i)
		if _, err := client.Put(ctx, "/bench/cache/"+name, `{"name":"`+name+`"}`); err != nil {
			b.Fatal(err)
		}
	}
	c := storage.NewCache(client, "/bench/cache/", func(h *host) string { return "/bench/cache/" + h.Name })
	if err := c.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Stop)
	data := []byte(`{"name":"500"}`)
	withAndWithoutAdapter(b, func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Get("/bench/cache/500").Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}, func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			v := new(host)
			if err := json.Unmarshal(data, v); err != nil {
				b.Fatal(err)
			}
			v.SetVersion(1)
		}
	})
}
