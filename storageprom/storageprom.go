// Package storageprom reports the metrics of package
// [github.com/etcdkit/storage] to Prometheus.
//
//	if err := storageprom.Register(prometheus.DefaultRegisterer); err != nil {
//		return err
//	}
//	http.Handle("/metrics", promhttp.Handler())
//
// After Register, every op, watch and cache of the process reports into the
// registry, also those started before it. The series:
//
//   - storage_operations_total{op,outcome} (counter) and
//     storage_operation_duration_seconds{op} (histogram): every op run alone
//     with Exec, and every Txn Commit. op is one of put, create, update,
//     get, get_multiple, get_prefix, get_range, exists, delete_key,
//     delete_value, delete_prefix, txn. A Txn counts once, as txn, and the
//     ops it holds are not counted again; a Txn whose compares failed has the
//     outcome constraint_violated whatever its ops' own errors. A Cache's Get
//     and GetPrefix count as get and get_prefix (they read memory: their
//     durations are microseconds), its writes as the ops they are. outcome is
//     one of ok, not_found, already_exists, version_mismatch,
//     constraint_violated, duplicate_keys, invalid (refused before any
//     request: an option that does not fit, a nil value, a TTL no lease can
//     carry, a key outside a cache's prefix, a delete of the whole keyspace)
//     and error (everything else: etcd, the network, a context, a value that
//     cannot be encoded or decoded).
//   - storage_watch_events_total{source}: events handed to a WatchOp's
//     handler (source watch: the items of its reads included) and watch
//     events applied to a Cache (source cache: the items its reads load are
//     not events; storage_cache_items shows them).
//   - storage_watch_restarts_total{reason}: resume (after a failure, from the
//     last delivered revision), relist (a re-read: etcd compacted past that
//     revision, or Cache.Verify found a difference), backlog (the stream was
//     cancelled because the handler lagged more than 1,000 events, and
//     resumed). Each restart counts under one reason.
//   - storage_watch_stopped_total{reason}: runs of a WatchOp or Cache that
//     ended while running. closed counts runs ended by Close or Stop; the
//     others count runs that stopped on their own: context (the context
//     given to Watch or Start ended), client_closed, auth, handler (the
//     handler returned an error), other.
//   - storage_watch_handler_queue_seconds (histogram): how long each watch
//     response with events waited between its receipt from etcd and its
//     delivery to the handler, or to the cache. A lagging handler shows here
//     first.
//   - storage_decode_errors_total: stored bytes that could not be decoded,
//     by a read, a watch or a Cache read (a Cache decodes on every read, so a
//     bad value counts once per read of it).
//   - storage_cache_items{prefix} and storage_cache_revision{prefix}
//     (gauges): the items of the started caches of a prefix, added up, and
//     the lowest revision among them (up to which every change reached the
//     cache). A cache's series appear with its first read and go with its
//     Stop; a cache whose watch stopped on its own keeps them, frozen, until
//     Stop.
//   - storage_lease_grants_total: leases granted for TTL puts, and
//     storage_leases{ttl_seconds} (gauge): the shared leases of every client
//     that have not expired, by their TTL.
//
// The watch's recovery is also logged, through the etcd client's own logger
// (clientv3.Config.Logger), whether or not Register was called: see
// [github.com/etcdkit/storage.WatchOp].
package storageprom

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/etcdkit/storage/internal/observe"
)

// Register makes every op, watch and cache of the process report into reg,
// from now on for the counters and histograms, and for the gauges whatever
// started before. Registering on several registries is fine: each gets every
// report. A second Register on the same registry returns an error wrapping
// the registry's prometheus.AlreadyRegisteredError, and reports nothing
// twice. Register is safe for concurrent use.
func Register(reg prometheus.Registerer) error {
	_, err := register(reg)
	return err
}

// register is Register that returns how to undo it, for tests: the
// observers are process-wide.
func register(reg prometheus.Registerer) (unregister func(), err error) {
	c := newCollector()
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("storageprom: register: %w", err)
	}
	remove := observe.Add(c)
	return func() {
		remove()
		reg.Unregister(c)
	}, nil
}

// durationBuckets span a cache read (microseconds) to a request that waits
// out a leader election (seconds): 10 µs, 40 µs, ... 2.6 s, 10.5 s.
var durationBuckets = prometheus.ExponentialBuckets(10e-6, 4, 11)

// collector is one registration: the observer that counts, and the
// collector of its series and of the gauges.
type collector struct {
	ops       *prometheus.CounterVec
	durations *prometheus.HistogramVec
	events    [observe.NumSources]prometheus.Counter
	restarts  [observe.NumRestarts]prometheus.Counter
	stopped   [observe.NumStops]prometheus.Counter
	queue     prometheus.Histogram
	decode    prometheus.Counter
	grants    prometheus.Counter
	vecs      []prometheus.Collector

	cacheItems, cacheRevision, leases *prometheus.Desc

	// The op series are made on first use, so that only the pairs of op
	// and outcome that occur are exported, and kept: resolving labels on
	// every op would cost a good part of a cache read. Two first uses at
	// once both store the series the vec gives them, which is the same.
	opSeries [observe.NumOps][observe.NumOutcomes]atomic.Pointer[prometheus.Counter]
	opTimes  [observe.NumOps]atomic.Pointer[prometheus.Observer]
}

var (
	_ observe.Observer     = (*collector)(nil)
	_ prometheus.Collector = (*collector)(nil)
)

func newCollector() *collector {
	c := &collector{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "storage_operations_total",
			Help: "Storage operations by op and outcome; a Txn counts once, as txn.",
		}, []string{"op", "outcome"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "storage_operation_duration_seconds",
			Help:    "Duration of storage operations by op.",
			Buckets: durationBuckets,
		}, []string{"op"}),
		queue: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "storage_watch_handler_queue_seconds",
			Help:    "Time from a watch response's receipt to its delivery to the handler or cache.",
			Buckets: durationBuckets,
		}),
		decode: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "storage_decode_errors_total",
			Help: "Stored values that could not be decoded.",
		}),
		grants: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "storage_lease_grants_total",
			Help: "Leases granted for TTL puts.",
		}),
		cacheItems: prometheus.NewDesc("storage_cache_items",
			"Items held by the started caches of a prefix.", []string{"prefix"}, nil),
		cacheRevision: prometheus.NewDesc("storage_cache_revision",
			"Revision up to which every change reached the caches of a prefix (the lowest among them).", []string{"prefix"}, nil),
		leases: prometheus.NewDesc("storage_leases",
			"Current shared leases of TTL puts, by TTL.", []string{"ttl_seconds"}, nil),
	}
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "storage_watch_events_total",
		Help: "Events delivered to watch handlers (source watch) or applied to caches (source cache).",
	}, []string{"source"})
	restarts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "storage_watch_restarts_total",
		Help: "Watch restarts by reason: resume, relist (re-read after compaction), backlog (lagging handler).",
	}, []string{"reason"})
	stopped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "storage_watch_stopped_total",
		Help: "Watch runs ended by Close (closed) or on their own, by reason.",
	}, []string{"reason"})
	// These label sets are few and known: made at once, so that each series
	// exists from the start at 0 (a rate or an alert needs a first sample).
	for s := range observe.NumSources {
		c.events[s] = events.WithLabelValues(s.String())
	}
	for r := range observe.NumRestarts {
		c.restarts[r] = restarts.WithLabelValues(r.String())
	}
	for s := range observe.NumStops {
		c.stopped[s] = stopped.WithLabelValues(s.String())
	}
	c.vecs = []prometheus.Collector{c.ops, c.durations, events, restarts, stopped, c.queue, c.decode, c.grants}
	return c
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.vecs {
		v.Describe(ch)
	}
	ch <- c.cacheItems
	ch <- c.cacheRevision
	ch <- c.leases
}

// Collect implements prometheus.Collector: the counters and histograms, and
// the gauges as they are now.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, v := range c.vecs {
		v.Collect(ch)
	}
	g := observe.CurrentGauges()
	if g == nil {
		return
	}
	for _, s := range g.Caches() {
		ch <- gauge(c.cacheItems, float64(s.Items), s.Prefix)
		ch <- gauge(c.cacheRevision, float64(s.Revision), s.Prefix)
	}
	for ttl, n := range g.Leases() {
		ch <- gauge(c.leases, float64(n), strconv.FormatInt(ttl, 10))
	}
}

// gauge is one gauge sample. A cache prefix is a key, arbitrary bytes, and
// Prometheus refuses a label value that is not UTF-8: the sample is then an
// invalid metric, which fails the scrape with that error instead of a panic
// that would end the process.
func gauge(desc *prometheus.Desc, v float64, label string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(desc, prometheus.GaugeValue, v, label)
	if err != nil {
		return prometheus.NewInvalidMetric(desc, err)
	}
	return m
}

// Operation implements observe.Observer.
func (c *collector) Operation(op observe.Op, outcome observe.Outcome, elapsed time.Duration) {
	c.opCounter(op, outcome).Inc()
	c.opDuration(op).Observe(elapsed.Seconds())
}

func (c *collector) opCounter(op observe.Op, outcome observe.Outcome) prometheus.Counter {
	p := &c.opSeries[op][outcome]
	if s := p.Load(); s != nil {
		return *s
	}
	s := c.ops.WithLabelValues(op.String(), outcome.String())
	p.Store(&s)
	return s
}

func (c *collector) opDuration(op observe.Op) prometheus.Observer {
	p := &c.opTimes[op]
	if s := p.Load(); s != nil {
		return *s
	}
	s := c.durations.WithLabelValues(op.String())
	p.Store(&s)
	return s
}

// WatchEvents implements observe.Observer.
func (c *collector) WatchEvents(source observe.Source, n int) { c.events[source].Add(float64(n)) }

// WatchRestart implements observe.Observer.
func (c *collector) WatchRestart(reason observe.Restart) { c.restarts[reason].Inc() }

// WatchStopped implements observe.Observer.
func (c *collector) WatchStopped(reason observe.Stop) { c.stopped[reason].Inc() }

// HandlerQueue implements observe.Observer.
func (c *collector) HandlerQueue(wait time.Duration) { c.queue.Observe(wait.Seconds()) }

// DecodeError implements observe.Observer.
func (c *collector) DecodeError() { c.decode.Inc() }

// LeaseGranted implements observe.Observer.
func (c *collector) LeaseGranted() { c.grants.Inc() }
