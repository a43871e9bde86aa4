package storage

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
)

// The benchmark payloads are defined once, here, and used by every pair: the
// white-box benchmarks below and the black-box ones in bench_*_test.go (the
// names are exported from the test build only, as export_test.go does).

// BenchSmall is the small payload: six fields, about 150 bytes of JSON, so
// it is stored as plain JSON.
type BenchSmall struct {
	StoredValue
	ID      string  `json:"id"`
	Name    string  `json:"name"`
	Address string  `json:"address"`
	Port    int     `json:"port"`
	Enabled bool    `json:"enabled"`
	Weight  float64 `json:"weight"`
}

// BenchLarge is the large payload: about 16 KiB of JSON, so it is stored
// gzip-compressed.
type BenchLarge struct {
	StoredValue
	Entries []BenchEntry `json:"entries"`
}

// BenchEntry is one entry of a BenchLarge: strings, an int, a bool, a map and
// a float.
type BenchEntry struct {
	Name   string            `json:"name"`
	Note   string            `json:"note"`
	Count  int               `json:"count"`
	Active bool              `json:"active"`
	Labels map[string]string `json:"labels"`
	Score  float64           `json:"score"`
}

// NewBenchSmall returns the small payload of item i, with ID id.
func NewBenchSmall(id string, i int) *BenchSmall {
	return &BenchSmall{
		ID:      id,
		Name:    fmt.Sprintf("checkout-backend-eu-west-1-az2-%05d", i),
		Address: fmt.Sprintf("10.%d.%d.%d", 100+i>>16&0x7f, 100+i>>8&0x7f, 100+i&0x7f),
		Port:    8443,
		Enabled: i%7 != 0,
		Weight:  (float64(i%1000) + 0.5) / 7,
	}
}

// benchLargeEntries makes BenchLarge's JSON about 16 KiB.
const benchLargeEntries = 75

var benchWords = strings.Fields(`replica primary standby drains traffic from
the pool when its health check fails twice in a row and rejoins after three
passes; the operator may pin it to a zone, raise its weight, or mark it for
maintenance so that the scheduler skips it during the nightly rollout window`)

// NewBenchLarge returns the large payload. It is the same on every call: its
// pseudo-random content (prose, labels from small vocabularies, full
// precision floats) compresses about as well as real configuration data.
func NewBenchLarge() *BenchLarge {
	r := rand.New(rand.NewPCG(1, 2))
	zones := []string{"eu-west-1a", "eu-west-1b", "eu-central-1a", "us-east-1c"}
	tiers := []string{"gold", "silver", "bronze"}
	v := &BenchLarge{Entries: make([]BenchEntry, benchLargeEntries)}
	for i := range v.Entries {
		words := make([]string, 8+r.IntN(8))
		for j := range words {
			words[j] = benchWords[r.IntN(len(benchWords))]
		}
		v.Entries[i] = BenchEntry{
			Name:   fmt.Sprintf("svc-%04d-%s", i, benchWords[r.IntN(len(benchWords))]),
			Note:   strings.Join(words, " "),
			Count:  r.IntN(1 << 20),
			Active: r.IntN(4) != 0,
			Labels: map[string]string{
				"zone":  zones[r.IntN(len(zones))],
				"tier":  tiers[r.IntN(len(tiers))],
				"owner": fmt.Sprintf("team-%02d", r.IntN(40)),
			},
			Score: r.Float64() * 100,
		}
	}
	return v
}

// BenchLoop runs body under b.Loop, and reports beside ns/op the CPU time
// the process spent per op (cpu-ns/op: all its threads, GC and the
// in-process etcd server included). Other processes competing for the cores
// stretch the wall clock, not the CPU time, so on a shared machine the CPU
// ratios of two impls stay meaningful when their ns/op ratios do not. Linux
// only; elsewhere just ns/op.
func BenchLoop(b *testing.B, body func()) {
	start, ok := processCPU()
	for b.Loop() {
		body()
	}
	if end, ok2 := processCPU(); ok && ok2 {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}

// BenchParallel is b.RunParallel(body) reporting cpu-ns/op as BenchLoop
// does.
func BenchParallel(b *testing.B, body func(pb *testing.PB)) {
	start, ok := processCPU()
	b.RunParallel(body)
	if end, ok2 := processCPU(); ok && ok2 {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}

// processCPU returns the nanoseconds the process's threads have run, from
// /proc/self/task/*/schedstat (nanosecond resolution, unlike the 10 ms ticks
// of /proc/self/stat or getrusage on many kernels).
func processCPU() (int64, bool) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, false
	}
	var total int64
	for _, t := range tasks {
		data, err := os.ReadFile("/proc/self/task/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited meanwhile
		}
		ns, _, _ := strings.Cut(string(data), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if err != nil {
			return 0, false
		}
		total += n
	}
	return total, true
}

// benchLargeJSON is the JSON of the large payload.
func benchLargeJSON(b *testing.B) []byte {
	b.Helper()
	data, err := json.Marshal(NewBenchLarge())
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkCompress is the compression step alone: the library's pooled
// klauspost writer against compress/gzip at its default level (a new writer
// per value, as a caller without a pool writes it). stored-B is the output
// size.
func BenchmarkCompress(b *testing.B) {
	data := benchLargeJSON(b)
	b.Run("impl=lib", func(b *testing.B) {
		b.ReportAllocs()
		var out []byte
		BenchLoop(b, func() {
			out = compress(data)
		})
		b.ReportMetric(float64(len(out)), "stored-B")
	})
	b.Run("impl=raw", func(b *testing.B) {
		b.ReportAllocs()
		var out bytes.Buffer
		BenchLoop(b, func() {
			out.Reset()
			zw := gzip.NewWriter(&out)
			_, _ = zw.Write(data)
			if err := zw.Close(); err != nil {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(out.Len()), "stored-B")
	})
}

// BenchmarkDecompress is the decompression step alone: the library's pooled
// reader and buffer (0 allocs/op) against compress/gzip's reader.
func BenchmarkDecompress(b *testing.B) {
	data := compress(benchLargeJSON(b))
	b.Run("impl=lib", func(b *testing.B) {
		b.ReportAllocs()
		BenchLoop(b, func() {
			buf := bufferPool.Get().(*bytes.Buffer)
			if err := decompress(buf, data); err != nil {
				b.Fatal(err)
			}
			putBuffer(buf)
		})
	})
	b.Run("impl=raw", func(b *testing.B) {
		b.ReportAllocs()
		BenchLoop(b, func() {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadAll(zr); err != nil {
				b.Fatal(err)
			}
		})
	})
}
