//go:build storage_testhooks

package storage_test

// The chaos test: a three-member cluster under random faults (member kills,
// dropped and blackholed connections, partitions, paused members,
// compaction), written to by several writers through ops and caches, watched
// by WatchOps and Caches pinned to different members, and recorded by a raw
// clientv3 watch on connections that bypass the bridges (the ground truth).
// After each run the checkers of internal/watchcheck judge what the watches
// delivered and what the caches answered against the ground truth. The
// ground truth is itself checked against etcd: every member's HashKV at one
// revision, and a fresh read equal to the truth's fold.
//
// A run is judged on amounts, never on speed: each quiet phase lasts until
// the workload has done enough (acknowledged writes; after the faults, events
// delivered to every healthy watch too), however long that takes on a slow
// machine, up to a generous deadline. A run that misses the deadline without
// a violation proves nothing: it is reported as "machine too slow" and the
// next seed runs instead (a bounded number of times in a row). Writes per
// second are reported, not judged.
//
// Knobs (environment): CHAOS_SEED replays one run; CHAOS_RUNS caps the
// number of runs; CHAOS_DURATION is the total time to start runs in (default
// 45s, so that make test stays short; make chaos sets 5m); CHAOS_MIN_WRITES
// (default 150) and CHAOS_MIN_EVENTS (default 100) are the amounts of a
// phase. A failed run writes its logs as JSON lines to a folder named in the
// failure.
//
// This file holds the test and its run loop. The rest is in files of their
// own: chaos_cluster_test.go (the members and their agreement),
// chaos_faults_test.go (the fault schedule), chaos_workload_test.go (the
// writers and readers), history_test.go (the recorders),
// chaos_judge_test.go (the verdict) and chaos_canary_test.go (the broken
// variants the verdict must catch).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/watchcheck"
)

const (
	chaosSubPrefixes = 10 // sub-prefixes k/s0/ .. k/s9/
	chaosSubKeys     = 20 // keys per sub-prefix: 200 keys in all
	chaosOpTimeout   = 1500 * time.Millisecond
	chaosPhase       = 1500 * time.Millisecond // the quiet phases before and after the faults
	chaosConverge    = 30 * time.Second        // bound of every wait for convergence
	// chaosPhaseDeadline bounds a quiet phase waiting for its amounts: a
	// run that needs longer was on a machine too slow to judge it.
	chaosPhaseDeadline = 90 * time.Second
	// chaosSlowRuns is how many runs in a row may be too slow before the
	// test gives up; chaosCanaryTries how many runs a canary gets to meet
	// its precondition.
	chaosSlowRuns    = 3
	chaosCanaryTries = 4
)

// chaosOptions are a run's settings.
type chaosOptions struct {
	seed   uint64
	faults []string // nil: one or two picked by the seed
	canary string   // non-empty: watch w0 and cache c0 are broken on purpose
	// converge bounds the waits for the subjects broken on purpose to
	// converge (default chaosConverge), which they may never do; canary
	// runs lower it. Healthy subjects always get chaosConverge.
	converge time.Duration
}

// chaosViolation is a failed check and what it is about: Subject names a
// watch or cache, or is empty for the run as a whole.
type chaosViolation struct {
	Subject string `json:"subject"`
	Msg     string `json:"msg"`
}

// chaosCacheSubj is a cache under test and what its readers saw.
type chaosCacheSubj struct {
	name   string
	member int
	c      storage.Cache[*taggedValue]

	mu    sync.Mutex // protects reads
	reads []watchcheck.CacheRead
}

func (s *chaosCacheSubj) record(r watchcheck.CacheRead) {
	s.mu.Lock()
	s.reads = append(s.reads, r)
	s.mu.Unlock()
}

// chaosTrial is one run: a fresh prefix, its subjects, workload and faults.
type chaosTrial struct {
	cc     *chaosCluster
	opt    chaosOptions
	rng    *rand.Rand // the test goroutine's: faults and their targets
	prefix string
	start  time.Time
	rec    *truthRecorder

	watches  []*historyRec
	watchOps []storage.WatchOp[*taggedValue]
	caches   []*chaosCacheSubj

	gate    sync.RWMutex // writers hold it shared per write; a digest check holds it to pause them
	acks    atomic.Int64 // acknowledged writes
	nextID  atomic.Int64
	bursts  atomic.Int64 // bursts started: a run may pick the fault twice
	mu      sync.Mutex   // protects the following fields
	writes  []chaosWrite
	faults  []chaosFault
	viol    []chaosViolation
	compact []int64 // revisions compacted to
}

func (r *chaosTrial) ms() int64 { return time.Since(r.start).Milliseconds() }

func (r *chaosTrial) violate(subject, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.viol = append(r.viol, chaosViolation{Subject: subject, Msg: fmt.Sprintf(format, args...)})
}

func (r *chaosTrial) fault(name string, member int, phase string) {
	r.mu.Lock()
	r.faults = append(r.faults, chaosFault{AtMs: r.ms(), Fault: name, Member: member, Phase: phase})
	r.mu.Unlock()
	r.cc.t.Logf("chaos %d: %6d ms  %-12s member %d %s", r.opt.seed, r.ms(), name, member, phase)
}

func (r *chaosTrial) key(sub, n int) string { return fmt.Sprintf("%sk/s%d/%02d", r.prefix, sub, n) }

// chaosResult is what a run found, for the test to judge.
type chaosResult struct {
	viol     []chaosViolation
	dumpDir  string
	summary  string
	faults   []string
	writes   int
	events   int
	recovery map[string]storage.Recovery
	// tooSlow is non-empty when a quiet phase missed its amounts by the
	// deadline: the run proves nothing (unless it found violations).
	tooSlow string
	// unmet is non-empty in a canary run whose broken path was never
	// taken: it says which precondition did not occur.
	unmet string
}

// caught reports whether a violation names subject.
func (res chaosResult) caught(subject string) []string {
	var msgs []string
	for _, v := range res.viol {
		if v.Subject == subject {
			msgs = append(msgs, v.Msg)
		}
	}
	return msgs
}

// runChaos runs one chaos run on cc and judges it.
func runChaos(t *testing.T, cc *chaosCluster, opt chaosOptions) chaosResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute) // two phase deadlines and then some
	defer cancel()
	if opt.converge == 0 {
		opt.converge = chaosConverge
	}
	r := &chaosTrial{cc: cc, opt: opt, rng: rand.New(rand.NewPCG(opt.seed, 1)), //nolint:gosec // a seeded test schedule
		prefix: fmt.Sprintf("/chaos/%d/", opt.seed), start: time.Now()}
	faults := opt.faults
	if faults == nil {
		for range 1 + r.rng.IntN(2) {
			faults = append(faults, chaosFaults[r.rng.IntN(len(chaosFaults))])
		}
	}
	t.Logf("chaos %d: prefix %s, faults %v, canary %q", opt.seed, r.prefix, faults, opt.canary)

	from, err := cc.revision(ctx)
	require.NoError(t, err)
	r.rec = startTruthRecorder(cc.direct, r.prefix, from)
	defer r.rec.stop()

	r.startSubjects(ctx, t)
	defer r.stopSubjects()

	wctx, stopWork := context.WithCancel(ctx)
	var work sync.WaitGroup
	r.startWorkload(wctx, &work)

	minWrites, minEvents := chaosEnvInt(t, "CHAOS_MIN_WRITES", 150), chaosEnvInt(t, "CHAOS_MIN_EVENTS", 100)
	t.Logf("chaos %d: phase 1: writes with every member healthy, until %d are acknowledged", opt.seed, minWrites)
	pre := r.quiet(ctx, minWrites, 0)
	r.digest(ctx, "before the faults")
	for _, f := range faults {
		r.inject(ctx, t, f)
	}
	t.Logf("chaos %d: phase 3: every fault healed; writes go on until %d more are acknowledged and each healthy watch delivered %d events",
		opt.seed, minWrites, minEvents)
	post := r.quiet(ctx, minWrites, minEvents)
	r.digest(ctx, "after the faults")
	stopWork()
	work.Wait()
	t.Logf("chaos %d: before the faults %s; after %s", opt.seed, pre, post)

	t.Logf("chaos %d: phase 4: quiet; judge", opt.seed)
	res := r.judge(ctx, t)
	res.faults = faults
	for _, p := range []chaosPhaseResult{pre, post} {
		if !p.reached && res.tooSlow == "" {
			res.tooSlow = fmt.Sprintf("machine too slow: a quiet phase reached only %s by its deadline (want %d writes, %d events per healthy watch)",
				p, p.wantWrites, p.wantEvents)
		}
	}
	res.summary = fmt.Sprintf("seed %d: faults %v, %d writes (%.0f/s before, %.0f/s after the faults), %d events delivered (%.0f/s), %d violations",
		opt.seed, faults, res.writes, pre.wps, post.wps, res.events, float64(res.events)/time.Since(r.start).Seconds(), len(res.viol))
	if res.tooSlow != "" {
		res.summary += "; " + res.tooSlow
	}
	if res.unmet != "" {
		res.summary += "; " + res.unmet
	}
	if len(res.viol) > 0 {
		res.dumpDir = r.dump(t)
	}
	return res
}

// startSubjects starts the watches and caches, each on a client pinned to
// one member (through its bridge).
func (r *chaosTrial) startSubjects(ctx context.Context, t *testing.T) {
	clus := r.cc.clus
	add := func(name, prefix string, member int, slow time.Duration) storage.WatchOp[*taggedValue] {
		rec := &historyRec{name: name, prefix: prefix, member: member, slow: slow}
		op := storage.NewWatchPrefixOp[*taggedValue](clus.Client(member), prefix)
		storage.SetWatchRestartHook(op, rec.restart)
		r.watches = append(r.watches, rec)
		r.watchOps = append(r.watchOps, op)
		return op
	}
	w0 := add("w0", r.prefix, 0, 0)
	w1 := add("w1", r.prefix, 1, 0)
	storage.SetMaxPending(w1, 200) // a bounded backlog: bursts make it cancel and resume
	add("w2", r.prefix, 2, 0)
	add("slow", r.prefix+"slow/", 1, 260*time.Millisecond)
	if r.opt.canary != "" {
		storage.SetWatchCanary(w0, r.opt.canary)
		storage.SetMaxPending(w0, 50)
	}
	for i, op := range r.watchOps {
		require.NoError(t, op.Watch(ctx, r.watches[i].handle), r.watches[i].name)
	}
	for i, member := range []int{0, 2} {
		s := &chaosCacheSubj{name: fmt.Sprintf("c%d", i), member: member}
		s.c = storage.NewCache(clus.Client(member), r.prefix, func(v *taggedValue) string { return v.Key })
		if i == 0 && r.opt.canary != "" {
			storage.SetCacheCanary(s.c, r.opt.canary)
		}
		require.NoError(t, s.c.Start(ctx), s.name)
		r.caches = append(r.caches, s)
	}
}

func (r *chaosTrial) stopSubjects() {
	for _, op := range r.watchOps {
		op.Close()
	}
	for _, s := range r.caches {
		s.c.Stop()
	}
}

// chaosPhaseResult is what the workload did during one quiet phase.
type chaosPhaseResult struct {
	writes, events         int // acknowledged writes; fewest events a healthy watch delivered
	wantWrites, wantEvents int
	took                   time.Duration
	wps                    float64 // acknowledged writes per second: reported, never judged
	reached                bool    // the amounts were reached before the deadline
}

func (p chaosPhaseResult) String() string {
	return fmt.Sprintf("%d writes (%.0f/s) and %d events per healthy watch in %v",
		p.writes, p.wps, p.events, p.took.Round(time.Millisecond))
}

// quiet lets the workload run for at least chaosPhase and until it has
// acknowledged minWrites writes and every healthy watch delivered minEvents
// events since the phase began, or until chaosPhaseDeadline.
func (r *chaosTrial) quiet(ctx context.Context, minWrites, minEvents int) chaosPhaseResult {
	p := chaosPhaseResult{wantWrites: minWrites, wantEvents: minEvents}
	start, acks := time.Now(), r.acks.Load()
	counts := make([]int, len(r.watches))
	for i, w := range r.watches {
		counts[i] = w.count()
	}
	deadline := time.NewTimer(chaosPhaseDeadline)
	defer deadline.Stop()
	for {
		p.took = time.Since(start)
		p.writes = int(r.acks.Load() - acks)
		p.wps = float64(p.writes) / p.took.Seconds()
		p.events = -1
		for i, w := range r.watches {
			if r.healthy(i) && (p.events < 0 || w.count()-counts[i] < p.events) {
				p.events = w.count() - counts[i]
			}
		}
		p.reached = p.took >= chaosPhase && p.writes >= minWrites && p.events >= minEvents
		if p.reached {
			return p
		}
		select { // the workload runs meanwhile; poll its amounts with the deadline
		case <-ctx.Done():
			return p
		case <-deadline.C:
			return p
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// healthy reports whether watch i counts towards a phase's events: not the
// slow watcher (its sub-prefix gets a few writes a second) and not a
// subject broken on purpose.
func (r *chaosTrial) healthy(i int) bool {
	w := r.watches[i]
	return w.slow == 0 && (r.opt.canary == "" || w.name != "w0")
}

// waitFor polls cond until it holds or chaosConverge passes, and reports
// whether it held.
func (r *chaosTrial) waitFor(ctx context.Context, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	for !cond() {
		select { // poll with the deadline
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true
}

// chaosEnvInt returns the integer in the environment variable name, or def.
func chaosEnvInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, name)
	return n
}

// chaosSeeds returns the seeds to run and the time to start runs in.
func chaosSeeds(t *testing.T) (seeds func(i int) (uint64, bool), budget time.Duration) {
	budget = 45 * time.Second
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "CHAOS_DURATION")
		budget = d
	}
	runs := -1
	if v := os.Getenv("CHAOS_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "CHAOS_RUNS")
		runs = n
	}
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "CHAOS_SEED")
		return func(i int) (uint64, bool) { return seed, i == 0 }, budget
	}
	base := uint64(time.Now().UnixNano()) % 1_000_000_000
	return func(i int) (uint64, bool) { return base + uint64(i), runs < 0 || i < runs }, budget
}

func TestChaos(t *testing.T) {
	cc := newChaosCluster(t)
	seeds, budget := chaosSeeds(t)
	start := time.Now()
	kinds := map[string]int{}
	var writes, events int
	runs, slow, slowInRow := 0, 0, 0
	for i := 0; ; i++ {
		seed, ok := seeds(i)
		// A run too slow to judge does not count: the next seed runs, even
		// past the budget, until one counts (bounded by chaosSlowRuns).
		if !ok || (runs > 0 && slowInRow == 0 && time.Since(start) > budget) {
			break
		}
		res := runChaos(t, cc, chaosOptions{seed: seed})
		t.Logf("chaos run %d: %s", i, res.summary)
		if len(res.viol) > 0 {
			for _, v := range res.viol {
				t.Errorf("chaos %d: %s: %s", seed, v.Subject, v.Msg)
			}
			t.Fatalf("chaos run failed; replay with CHAOS_SEED=%d; logs in %s", seed, res.dumpDir)
		}
		if res.tooSlow != "" {
			slow++
			slowInRow++
			t.Logf("chaos %d: not counted (%s); the next seed runs", seed, res.tooSlow)
			if slowInRow >= chaosSlowRuns {
				t.Fatalf("chaos: %d runs in a row were too slow to judge (last: %s)", slowInRow, res.tooSlow)
			}
			continue
		}
		slowInRow = 0
		runs++
		writes += res.writes
		events += res.events
		for _, f := range res.faults {
			kinds[f]++
		}
	}
	require.Positive(t, runs, "no chaos run was judged")
	t.Logf("chaos: %d runs judged in %v (%d more too slow to count), faults %v, %d writes and %d delivered events checked",
		runs, time.Since(start).Round(time.Second), slow, kinds, writes, events)
}
