// Command benchratio reads Go benchmark output (bench.txt from make bench)
// and prints, as Markdown, the library's cost relative to its baselines: for
// every benchmark whose last name element is impl=NAME, the ratio of the
// medians of impl=lib and of each other impl, then the targets of
// docs/BENCHMARKS.md with the measured value and a verdict.
//
// Usage: go run ./internal/benchratio bench.txt
//
// Medians, not means: on a shared machine one slow run must not move the
// result. Run the benchmarks interleaved (make bench runs every benchmark
// once per round) so that drift affects lib and its baseline alike.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// sample is where a measurement belongs: a benchmark (without impl and
// GOMAXPROCS suffix), an impl, and a unit.
type sample struct{ bench, impl, unit string }

type results struct {
	values map[sample][]float64
	benchs []string            // in order of appearance
	impls  map[string][]string // bench -> impls in order of appearance
	units  []string            // extra units (not ns/op, B/op, allocs/op), in order
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

// cpuUnit is the process CPU time per op that the benchmarks report beside
// the wall clock (storage.BenchLoop): robust where other processes compete
// for the cores.
const cpuUnit = "cpu-ns/op"

func parse(r io.Reader) (*results, error) {
	res := &results{values: make(map[sample][]float64), impls: make(map[string][]string)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // not a result line
		}
		name := procsSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
		bench, impl := name, ""
		if i := strings.LastIndex(name, "/impl="); i >= 0 {
			bench, impl = name[:i], name[i+len("/impl="):]
		}
		if _, seen := res.impls[bench]; !seen {
			res.benchs = append(res.benchs, bench)
		}
		if !slices.Contains(res.impls[bench], impl) {
			res.impls[bench] = append(res.impls[bench], impl)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not a number", f[0], f[i])
			}
			unit := f[i+1]
			k := sample{bench, impl, unit}
			res.values[k] = append(res.values[k], v)
			if !slices.Contains([]string{"ns/op", cpuUnit, "B/op", "allocs/op"}, unit) && !slices.Contains(res.units, unit) {
				res.units = append(res.units, unit)
			}
		}
	}
	return res, sc.Err()
}

// median returns the median of the samples of k and their count.
func (r *results) median(k sample) (float64, int) {
	vs := slices.Clone(r.values[k])
	if len(vs) == 0 {
		return 0, 0
	}
	slices.Sort(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2], n
	}
	return (vs[n/2-1] + vs[n/2]) / 2, n
}

func (r *results) printPairs(w io.Writer) {
	fmt.Fprintln(w, "| benchmark | lib vs | time ratio | CPU ratio | lib ns/op | base ns/op | lib B/op | base B/op | lib allocs/op | base allocs/op | runs |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, bench := range r.benchs {
		if !slices.Contains(r.impls[bench], "lib") {
			continue
		}
		for _, base := range r.impls[bench] {
			if base == "lib" {
				continue
			}
			lt, n := r.median(sample{bench, "lib", "ns/op"})
			bt, m := r.median(sample{bench, base, "ns/op"})
			lc, _ := r.median(sample{bench, "lib", cpuUnit})
			bc, _ := r.median(sample{bench, base, cpuUnit})
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d |\n", bench, base, ratio(lt, bt), ratio(lc, bc),
				num(lt), num(bt), r.cell(bench, "lib", "B/op"), r.cell(bench, base, "B/op"),
				r.cell(bench, "lib", "allocs/op"), r.cell(bench, base, "allocs/op"), n, m)
		}
	}
}

// printMetrics lists the medians of the units benchmarks report themselves.
func (r *results) printMetrics(w io.Writer) {
	if len(r.units) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| benchmark | impl | metric | median |")
	fmt.Fprintln(w, "|---|---|---|---:|")
	for _, bench := range r.benchs {
		for _, impl := range r.impls[bench] {
			for _, unit := range r.units {
				if v, n := r.median(sample{bench, impl, unit}); n > 0 {
					fmt.Fprintf(w, "| %s | %s | %s | %s |\n", bench, impl, unit, num(v))
				}
			}
		}
	}
}

func (r *results) cell(bench, impl, unit string) string {
	v, n := r.median(sample{bench, impl, unit})
	if n == 0 {
		return "-"
	}
	return num(v)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3fx", a/b)
}

func num(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// check is one target: num/den ≤ max, or num ≤ max when den is empty.
type check struct {
	target   string
	num, den sample
	max      float64
	// client names the op's BenchmarkClientSide pair, if any: the library's
	// client-side cost (lib − raw there) over the op's raw time estimates
	// the ratio without the server's run-to-run spread.
	client string
}

func lib(bench, unit string) sample { return sample{bench, "lib", unit} }

// estimate is 1 + (client-side lib − raw) / the op's raw ns/op.
func (r *results) estimate(c check) (float64, bool) {
	if c.client == "" {
		return 0, false
	}
	l, n := r.median(sample{"ClientSide/" + c.client, "lib", "ns/op"})
	k, m := r.median(sample{"ClientSide/" + c.client, "raw", "ns/op"})
	d, o := r.median(c.den)
	if n == 0 || m == 0 || o == 0 || d == 0 {
		return 0, false
	}
	return 1 + (l-k)/d, true
}

// cpuRatio is a time check's ratio measured in CPU time instead ("-" for
// other checks).
func (r *results) cpuRatio(c check) string {
	if c.num.unit != "ns/op" || c.den.unit != "ns/op" {
		return "-"
	}
	a, n := r.median(sample{c.num.bench, c.num.impl, cpuUnit})
	b, m := r.median(sample{c.den.bench, c.den.impl, cpuUnit})
	if n == 0 || m == 0 || b == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', 3, 64)
}

func (r *results) printChecks(w io.Writer) {
	fmt.Fprintln(w, "\n| target | measured | CPU | client-side estimate | verdict |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|")
	for _, c := range checks {
		a, n := r.median(c.num)
		b, m := 1.0, 1
		if c.den != (sample{}) {
			b, m = r.median(c.den)
		}
		measured, verdict := "-", "not run"
		est, estOK := r.estimate(c)
		if n > 0 && m > 0 {
			v := a
			if c.den != (sample{}) && b != 0 {
				v = a / b
			}
			measured = strconv.FormatFloat(v, 'f', 3, 64)
			switch {
			case v <= c.max:
				verdict = "ok"
			case estOK && est <= c.max:
				verdict = "within noise (estimate ok)"
			default:
				verdict = "MISSED"
			}
		}
		estimate := "-"
		if estOK {
			estimate = strconv.FormatFloat(est, 'f', 3, 64)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", c.target, measured, r.cpuRatio(c), estimate, verdict)
	}
}

// checks are the targets of the benchmark issue, as ratios of medians.
var checks = func() []check {
	t := func(bench, base string, max float64, target string) check {
		return check{target: target, num: lib(bench, "ns/op"), den: sample{bench, base, "ns/op"}, max: max}
	}
	op := func(bench, client, target string) check {
		c := t(bench, "raw", 1.05, target)
		c.client = client
		return c
	}
	cs := []check{
		op("Put", "op=Put", "Put ≤ 1.05x raw"),
		op("Create", "op=Create", "Create ≤ 1.05x raw"),
		op("Update", "op=Update", "Update ≤ 1.05x raw"),
		op("Get", "op=Get", "Get ≤ 1.05x raw"),
		op("GetPrefix/items=100", "op=GetPrefix/items=100", "GetPrefix(100) ≤ 1.05x raw"),
		op("Txn/creates=10", "op=Txn/creates=10", "Txn of 10 creates ≤ 1.05x raw"),
		t("Encode/size=small", "raw", 1.15, "small encode ≤ 1.15x json.Marshal"),
		t("Encode/size=small", "raw-op", 1.15, "small encode ≤ 1.15x json.Marshal + clientv3.OpPut"),
		{target: "small encode: no gzip work (stored-B = JSON size)", num: lib("Encode/size=small", "stored-B"),
			den: sample{"Encode/size=small", "raw", "stored-B"}, max: 1},
		t("Decode/size=small", "raw", 1.15, "small decode ≤ 1.15x json.Unmarshal"),
		t("Decode/size=small-x1000", "raw", 1.15, "1000 small decodes ≤ 1.15x json.Unmarshal"),
		t("Encode/size=large", "raw", 1/2.5, "large encode ≥ 2.5x faster than json.Marshal + compress/gzip (ratio ≤ 0.4)"),
		{target: "large encode stored bytes ≤ 1.10x compress/gzip default", num: lib("Encode/size=large", "stored-B"),
			den: sample{"Encode/size=large", "raw", "stored-B"}, max: 1.10},
		t("Decode/size=large", "raw", 1, "large decode no slower than compress/gzip + json.Unmarshal"),
		{target: "decompress step: 0 allocs/op", num: lib("Decompress", "allocs/op"), max: 0},
		t("Cache/Get/items=1000", "raw", 1.25, "Cache Get ≤ 1.25x json.Unmarshal"),
	}
	for _, n := range []string{"1000", "10000", "100000", "1000000"} {
		cs = append(cs, t("Scale/GetPrefix/items="+n, "gets", 1.5, "Cache GetPrefix of 10 ≤ 1.5x ten Cache Gets at "+n))
	}
	flat := func(n string) check {
		return check{target: "Cache GetPrefix(10) flat: " + n + " items ≤ 1.2x 1000 items",
			num: lib("Scale/GetPrefix/items="+n, "ns/op"), den: lib("Scale/GetPrefix/items=1000", "ns/op"), max: 1.2}
	}
	cs = append(cs,
		flat("100000"),
		flat("1000000"),
		t("Scale/GetPrefix/items=10000", "mapscan", 1/5.0, "Cache GetPrefix ≥ 5x faster than a map scan at 10,000 (ratio ≤ 0.2)"),
		t("Scale/Start/items=100000", "raw", 1.1, "Cache Start 100k ≤ 1.1x raw paged read"),
		t("Scale/Start/items=1000000", "raw", 1.1, "Cache Start 1M ≤ 1.1x raw paged read"),
		check{target: "cache memory per item ≤ 1.3x stored bytes + key at 100k", num: lib("Scale/Memory/items=100000", "x-stored"), max: 1.3},
		check{target: "cache memory per item ≤ 1.3x stored bytes + key at 1M", num: lib("Scale/Memory/items=1000000", "x-stored"), max: 1.3},
		t("Txn/creates=100", "raw", 1.05, "Txn of 100 creates ≤ 1.05x raw"),
		t("PutTTL", "raw-lease", 1.05, "Puts with TTL ≤ 1.05x raw puts with a pre-granted lease"),
		// Throughput ≥ 0.95x raw is time per op ≤ 1/0.95x.
		t("UpdateParallel", "raw", 1/0.95, "64 parallel updaters ≥ 0.95x raw throughput (time ratio ≤ 1.053)"),
		t("WatchPrefix/events=100", "raw", 1.2, "watch delivery ≤ 1.2x raw"),
		t("PutTTL", "raw", 1.1, "Puts with TTL ≤ 1.1x plain Puts"),
		t("CacheSync", "raw", 0.5, "Cache Sync + GetPrefix(100 of 10,000), 64 readers ≥ 2x a linearizable range + decode (ratio ≤ 0.5)"),
	)
	return cs
}()

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchratio bench.txt")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	res, err := parse(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	res.printPairs(os.Stdout)
	res.printMetrics(os.Stdout)
	res.printChecks(os.Stdout)
}
