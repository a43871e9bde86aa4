//go:build storage_testhooks

package storage_test

// The chaos test: a three-member cluster under random faults (member kills,
// dropped and blackholed connections, partitions, paused members,
// compaction), written to by several writers through ops and caches, watched
// by WatchOps and Caches pinned to different members, and recorded by a raw
// clientv3 watch on connections that bypass the bridges (the ground truth).
// After each run the checkers of chaos_check_test.go judge what the watches
// delivered and what the caches answered against the ground truth, which is
// itself checked against etcd (every member's HashKV at one revision, and a
// fresh read equal to the truth's fold).
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

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"

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

// chaosFaults are the faults a run picks from.
var chaosFaults = []string{"kill-leader", "kill-watched", "drop", "blackhole", "partition", "pause", "compact", "burst"}

// chaosCluster is the cluster shared by the runs of one test, with the state
// of its members: every fault restores what it broke before it returns, and
// these fields check it does (two members down lose quorum; Blackhole twice
// panics; a stopped member has no bridge).
type chaosCluster struct {
	t      *testing.T
	clus   *integration.Cluster
	direct *clientv3.Client // every member, bypassing the bridges
	urls   []string         // direct URL of each member
	down   int              // the stopped member, or -1
	holed  int              // the blackholed member, or -1
}

func newChaosCluster(t *testing.T) *chaosCluster {
	clus := newCluster(t, &integration.ClusterConfig{Size: 3, UseBridge: true, SnapshotCount: 50,
		WatchProgressNotifyInterval: 200 * time.Millisecond})
	cc := &chaosCluster{t: t, clus: clus, down: -1, holed: -1}
	for _, m := range clus.Members {
		// With UseBridge, GRPCURL is the bridge's address; the member
		// itself listens on the port without the bridge's trailing 0.
		direct := "unix://" + net.JoinHostPort("localhost", m.GRPCPortNumber())
		require.NotEqual(t, direct, m.GRPCURL, "GRPCURL must be the bridged address")
		cc.urls = append(cc.urls, direct)
	}
	direct, err := integration.NewClient(t, clientv3.Config{Endpoints: cc.urls, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = direct.Close() }) // before Terminate: cleanups run last-in, first-out
	cc.direct = direct
	return cc
}

func (cc *chaosCluster) others(i int) []*integration.Member {
	var others []*integration.Member
	for j, m := range cc.clus.Members {
		if j != i {
			others = append(others, m)
		}
	}
	return others
}

// revision returns etcd's current revision.
func (cc *chaosCluster) revision(ctx context.Context) (int64, error) {
	var rev int64
	err := retryWrite(ctx, func(ctx context.Context) error {
		resp, err := cc.direct.Get(ctx, "/chaos-revision-probe")
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev, err
}

// hashKV checks that every member reports the same HashKV at one revision.
func (cc *chaosCluster) hashKV(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		rev, err := cc.revision(ctx)
		if err != nil {
			return err
		}
		hashes := make([]string, len(cc.urls))
		for i, url := range cc.urls {
			resp, err := cc.direct.HashKV(ctx, url, rev)
			if err != nil {
				hashes[i] = "error: " + err.Error()
				continue
			}
			hashes[i] = fmt.Sprintf("hash %d compact %d", resp.Hash, resp.CompactRevision)
		}
		if slices.Equal(hashes, []string{hashes[0], hashes[0], hashes[0]}) && !strings.HasPrefix(hashes[0], "error") {
			return nil
		}
		last = fmt.Errorf("members disagree on HashKV at revision %d: %v", rev, hashes)
		select { // a lagging member catches up; poll with the deadline
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return last
}

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

// chaosSubject names what a violation is about ("" for the run as a whole).
type chaosViolation struct {
	Subject string `json:"subject"`
	Msg     string `json:"msg"`
}

// chaosCacheSubj is a cache under test and what its readers saw.
type chaosCacheSubj struct {
	name   string
	member int
	c      storage.Cache[*chaosValue]

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
	rec    *chaosRecorder

	watches  []*chaosWatchRec
	watchOps []storage.WatchOp[*chaosValue]
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
	r.rec = startChaosRecorder(cc.direct, r.prefix, from)
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
	add := func(name, prefix string, member int, slow time.Duration) storage.WatchOp[*chaosValue] {
		rec := &chaosWatchRec{name: name, prefix: prefix, member: member, slow: slow}
		op := storage.NewWatchPrefixOp[*chaosValue](clus.Client(member), prefix)
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
		s.c = storage.NewCache(clus.Client(member), r.prefix, func(v *chaosValue) string { return v.Key })
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

// inject applies one fault and heals it before returning; writes go on.
func (r *chaosTrial) inject(ctx context.Context, t *testing.T, fault string) {
	cc := r.cc
	clus := cc.clus
	member := r.rng.IntN(len(clus.Members))
	if r.opt.canary != "" {
		member = 0 // the broken subjects' member
	}
	t.Logf("chaos %d: phase 2: %s", r.opt.seed, fault)
	hold := time.Duration(1000+r.rng.IntN(1000)) * time.Millisecond
	switch fault {
	case "kill-leader", "kill-watched":
		if fault == "kill-leader" {
			member = clus.WaitLeader(t)
		}
		require.Equal(t, -1, cc.down, "one member down at a time")
		require.NotEqual(t, member, cc.holed, "a blackholed member is not stopped")
		r.fault(fault, member, "stop")
		clus.Members[member].Stop(t)
		cc.down = member
		time.Sleep(hold) // the member stays down while writes go on
		require.NoError(t, clus.Members[member].Restart(t))
		cc.down = -1
		clus.WaitLeader(t)
		r.fault(fault, member, "restarted")
	case "drop":
		require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
		r.fault(fault, member, "start")
		for range 3 {
			clus.Members[member].Bridge().DropConnections()
			time.Sleep(hold / 3)
		}
		r.fault(fault, member, "end")
	case "blackhole":
		require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
		require.Equal(t, -1, cc.holed, "Blackhole twice panics")
		r.fault(fault, member, "blackhole")
		clus.Members[member].Bridge().Blackhole()
		cc.holed = member
		time.Sleep(hold)
		clus.Members[member].Bridge().Unblackhole()
		cc.holed = -1
		r.fault(fault, member, "unblackhole")
	case "partition", "burst":
		others := cc.others(member)
		r.fault(fault, member, "partition")
		watched := r.watchOps[member] // w0, w1, w2 are pinned to members 0, 1, 2
		resumed := storage.WatchRecovery(watched).Resumes
		clus.Members[member].InjectPartition(t, others...)
		if fault == "burst" {
			r.burst(ctx, 1200, member)
		}
		time.Sleep(hold)
		// The partition exercises the library only once the member ended
		// the watch pinned to it (ErrNoLeader) and the library took over:
		// a slow machine takes longer to notice, so hold until it did.
		if !r.waitFor(ctx, func() bool {
			return storage.WatchRecovery(watched).Resumes > resumed || storage.WatchEnded(watched)
		}) {
			t.Logf("chaos %d: %s did not restart within %v of the partition", r.opt.seed, r.watches[member].name, chaosConverge)
		}
		if fault == "burst" {
			// Over a thousand revisions while cut off. The member's
			// clients are kept away (blackholed) until it has applied
			// them: a watch resumed on a member still catching up is
			// among its synced watchers and gets each revision as it is
			// applied, while one resumed afterwards is caught up in
			// batches of up to 1000 revisions whose header runs ahead of
			// their events, and bounded backlogs cancel and resume.
			require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
			require.Equal(t, -1, cc.holed, "Blackhole twice panics")
			clus.Members[member].Bridge().Blackhole()
			cc.holed = member
			clus.Members[member].RecoverPartition(t, others...)
			clus.WaitLeader(t)
			r.fault(fault, member, "recovered, clients blackholed")
			if !r.waitFor(ctx, func() bool {
				rev, err := cc.revision(ctx)
				return err == nil && clus.Members[member].Server.KV().Rev() >= rev
			}) {
				t.Logf("chaos %d: member %d did not catch up within %v", r.opt.seed, member, chaosConverge)
			}
			clus.Members[member].Bridge().Unblackhole()
			cc.holed = -1
			r.fault(fault, member, "caught up, unblackholed")
			break
		}
		clus.Members[member].RecoverPartition(t, others...)
		clus.WaitLeader(t)
		r.fault(fault, member, "recovered")
	case "pause":
		r.fault(fault, member, "pause")
		clus.Members[member].Pause()
		time.Sleep(hold)
		clus.Members[member].Resume()
		clus.WaitLeader(t)
		r.fault(fault, member, "resume")
	case "compact":
		// Compaction every 100-200 ms while a member is cut off from its
		// client (blackholed), so the watches there resume past it.
		require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
		cctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); r.compactor(cctx) }()
		r.fault(fault, member, "blackhole+compact")
		clus.Members[member].Bridge().Blackhole()
		cc.holed = member
		time.Sleep(hold)
		clus.Members[member].Bridge().Unblackhole()
		cc.holed = -1
		time.Sleep(hold / 2)
		stop()
		wg.Wait()
		r.fault(fault, member, "unblackhole, compactor stopped")
	default:
		t.Fatalf("unknown fault %q", fault)
	}
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

// compactor compacts to the newest revision the ground truth has received,
// every 100-200 ms, until ctx ends.
func (r *chaosTrial) compactor(ctx context.Context) {
	rng := rand.New(rand.NewPCG(r.opt.seed, 2)) //nolint:gosec // a seeded test schedule
	var done int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(100+rng.IntN(100)) * time.Millisecond):
		}
		rev := r.rec.compactable()
		if rev <= done {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
		_, err := r.cc.direct.Compact(cctx, rev, clientv3.WithCompactPhysical())
		cancel()
		if err == nil {
			done = rev
			r.mu.Lock()
			r.compact = append(r.compact, rev)
			r.mu.Unlock()
		}
	}
}

// digest pauses the writers, waits until etcd's current revision reached the
// ground truth, and checks that each cache's digest (key -> mod revision)
// converges to the truth's at its newest revision (keys with a TTL may
// still expire meanwhile: every poll compares with the newest truth).
func (r *chaosTrial) digest(ctx context.Context, when string) {
	r.gate.Lock()
	defer r.gate.Unlock()
	rev, err := r.cc.revision(ctx)
	if err != nil {
		r.violate("", "digest %s: read the revision: %v", when, err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	if err := r.rec.waitReached(wctx, rev); err != nil {
		r.violate("", "digest %s: %v", when, err)
		return
	}
	for _, s := range r.caches {
		sctx, cancel := context.WithTimeout(ctx, r.converge(s.name))
		if msg := r.cacheConverges(sctx, s, false); msg != "" {
			r.violate(s.name, "digest %s (truth at revision %d or later): %s", when, rev, msg)
		}
		cancel()
	}
}

// converge bounds the waits for subject to converge: chaosConverge, or the
// run's lower bound for a subject broken on purpose, which may never do.
func (r *chaosTrial) converge(subject string) time.Duration {
	if r.opt.canary != "" && (subject == "w0" || subject == "c0") {
		return r.opt.converge
	}
	return chaosConverge
}

// cacheConverges polls until the cache equals the ground truth's newest
// state, by mod revision, or with values and versions too (full); it
// returns the last difference if it does not before ctx ends.
func (r *chaosTrial) cacheConverges(ctx context.Context, s *chaosCacheSubj, full bool) string {
	var msg string
	for {
		truth, err := r.rec.snapshot()
		if err != nil {
			return err.Error()
		}
		items, err := s.c.GetPrefix("").Exec(ctx)
		if err != nil {
			return "read: " + err.Error()
		}
		msg = chaosCacheDiff(truth, items, full)
		if msg == "" {
			return ""
		}
		select { // the cache catches up; poll with the deadline
		case <-ctx.Done():
			return msg
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// chaosCacheDiff compares cache items with the fold of the whole truth.
func chaosCacheDiff(truth []watchcheck.Truth, items []*chaosValue, full bool) string {
	wantRev, gotRev := map[string]int64{}, map[string]int64{}
	want := map[string]watchcheck.KV{}
	for _, t := range truth {
		if t.Type == storage.EventTypeDelete {
			delete(wantRev, t.Key)
			delete(want, t.Key)
			continue
		}
		wantRev[t.Key] = t.Revision
		want[t.Key] = watchcheck.KV{Value: t.Value, Version: t.Version}
	}
	got := map[string]watchcheck.KV{}
	for _, v := range items {
		gotRev[v.Key] = v.ModRevision()
		got[v.Key] = watchcheck.KV{Value: v.Tag, Version: v.Version()}
	}
	if k, ok := watchcheck.DigestDiff(gotRev, wantRev); ok {
		return fmt.Sprintf("digest differs at %s: cache mod revision %d, truth %d (%d keys, truth %d)",
			k, gotRev[k], wantRev[k], len(gotRev), len(wantRev))
	}
	if k, ok := watchcheck.StateDiff(got, want); full && ok {
		return fmt.Sprintf("%s: cache %s, truth %s", k, watchcheck.FormatKV(got, k), watchcheck.FormatKV(want, k))
	}
	return ""
}

// startWorkload starts the writers, the slow sub-prefix writer and the
// cache readers; they stop when ctx ends.
func (r *chaosTrial) startWorkload(ctx context.Context, wg *sync.WaitGroup) {
	clus := r.cc.clus
	for i := range 8 {
		name := fmt.Sprintf("op%d", i)
		rng := rand.New(rand.NewPCG(r.opt.seed, uint64(10+i))) //nolint:gosec // a seeded workload
		client := clus.Client(i % len(clus.Members))
		wg.Add(1)
		go func() { defer wg.Done(); r.opWriter(ctx, name, rng, client) }()
	}
	for i, s := range r.caches {
		wrng := rand.New(rand.NewPCG(r.opt.seed, uint64(20+i))) //nolint:gosec // a seeded workload
		rrng := rand.New(rand.NewPCG(r.opt.seed, uint64(30+i))) //nolint:gosec // a seeded workload
		wg.Add(2)
		go func() { defer wg.Done(); r.cacheWriter(ctx, s, wrng) }()
		go func() { defer wg.Done(); r.cacheReader(ctx, s, rrng) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.slowWriter(ctx) }()
}

// exec runs one write under the gate with a short timeout and records it.
func (r *chaosTrial) exec(ctx context.Context, w chaosWrite, op func(ctx context.Context) (int64, error)) chaosWrite {
	r.gate.RLock()
	defer r.gate.RUnlock()
	w.ID = int(r.nextID.Add(1))
	w.StartMs = r.ms()
	octx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
	rev, err := op(octx)
	cancel()
	w.EndMs = r.ms()
	w.Revision = rev
	switch {
	case err == nil:
		w.Outcome = chaosOK
		r.acks.Add(1)
	case errors.Is(err, storage.ErrAlreadyExists), errors.Is(err, storage.ErrValueVersionMismatch),
		errors.Is(err, storage.ErrOperationConstraintViolated):
		w.Outcome = chaosFailed
	default:
		w.Outcome, w.Revision = chaosUnknown, 0
	}
	if err != nil {
		w.Err = err.Error()
	}
	r.mu.Lock()
	r.writes = append(r.writes, w)
	r.mu.Unlock()
	return w
}

// opWriter writes through the library's ops: puts, creates, updates and
// deletes of read values, prefix deletes, txns, TTL puts and
// delete-then-create.
func (r *chaosTrial) opWriter(ctx context.Context, name string, rng *rand.Rand, client *clientv3.Client) {
	for n := 0; ctx.Err() == nil; n++ {
		sub, k := rng.IntN(chaosSubPrefixes), rng.IntN(chaosSubKeys)
		key := r.key(sub, k)
		tag := fmt.Sprintf("%s.%d", name, n)
		v := &chaosValue{Key: key, Tag: tag}
		switch p := rng.IntN(100); {
		case p < 25:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "put", PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewPutOp(client, key, v)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 35:
			ttl := time.Duration(1+rng.IntN(2)) * time.Second
			r.exec(ctx, chaosWrite{Writer: name, Kind: "ttl-put", PutKeys: []string{key}, Tags: []string{tag}, TTL: true},
				func(ctx context.Context) (int64, error) {
					op := storage.NewPutOp(client, key, v).WithTTL(ttl)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 50:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "create", PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewCreateOp(client, key, v)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 80:
			gctx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
			old, err := storage.NewGetOp[*chaosValue](client, key).Exec(gctx)
			cancel()
			switch {
			case errors.Is(err, storage.ErrNotFound):
				old = &chaosValue{Key: key} // version 0: Update creates
			case err != nil:
				continue
			}
			if p < 70 {
				old.Tag = tag
				r.exec(ctx, chaosWrite{Writer: name, Kind: "update", PutKeys: []string{key}, Tags: []string{tag}},
					func(ctx context.Context) (int64, error) {
						op := storage.NewUpdateOp(client, key, old)
						err := op.Exec(ctx)
						return op.Revision(), err
					})
				continue
			}
			if old.Version() == 0 {
				continue
			}
			r.exec(ctx, chaosWrite{Writer: name, Kind: "delete-value", DelKeys: []string{key}, DelValue: true},
				func(ctx context.Context) (int64, error) {
					op := storage.NewDeleteValueOp(client, key, old)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 82:
			sp := fmt.Sprintf("%sk/s%d/", r.prefix, sub)
			r.exec(ctx, chaosWrite{Writer: name, Kind: "delete-prefix", DelPrefix: sp},
				func(ctx context.Context) (int64, error) {
					op := storage.NewDeletePrefixOp(client, sp)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 92:
			r.txn(ctx, name, n, rng, client)
		default:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "delete", DelKeys: []string{key}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewDeleteKeyOp(client, key)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
			r.exec(ctx, chaosWrite{Writer: name, Kind: "re-create", PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewCreateOp(client, key, v)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		}
	}
}

// txn commits 2 to 4 ops on keys of distinct sub-prefixes: puts, creates and
// key deletes.
func (r *chaosTrial) txn(ctx context.Context, name string, n int, rng *rand.Rand, client *clientv3.Client) {
	w := chaosWrite{Writer: name, Kind: "txn"}
	var ops []storage.TxnOperation
	for i, sub := range rng.Perm(chaosSubPrefixes)[:2+rng.IntN(3)] {
		key := r.key(sub, rng.IntN(chaosSubKeys))
		tag := fmt.Sprintf("%s.%d.%d", name, n, i)
		v := &chaosValue{Key: key, Tag: tag}
		switch rng.IntN(4) {
		case 0:
			ops = append(ops, storage.NewCreateOp(client, key, v))
		case 1:
			ops = append(ops, storage.NewDeleteKeyOp(client, key))
			w.DelKeys = append(w.DelKeys, key)
			continue
		default:
			ops = append(ops, storage.NewPutOp(client, key, v))
		}
		w.PutKeys, w.Tags = append(w.PutKeys, key), append(w.Tags, tag)
	}
	r.exec(ctx, w, func(ctx context.Context) (int64, error) {
		err := storage.NewTxn(client, ops...).Commit(ctx)
		return ops[0].(interface{ Revision() int64 }).Revision(), err
	})
}

// cacheWriter writes through a cache: puts, creates, updates and deletes of
// cached values, prefix deletes. A successful put is recorded as a read of
// its revision: no later read may return an older one.
func (r *chaosTrial) cacheWriter(ctx context.Context, s *chaosCacheSubj, rng *rand.Rand) {
	name := "cache-" + s.name
	for n := 0; ctx.Err() == nil; n++ {
		sub, k := rng.IntN(chaosSubPrefixes), rng.IntN(chaosSubKeys)
		key := r.key(sub, k)
		tag := fmt.Sprintf("%s.%d", name, n)
		v := &chaosValue{Key: key, Tag: tag}
		put := func(kind string, op storage.PutOp[*chaosValue]) {
			start := chaosClock.Add(1)
			w := r.exec(ctx, chaosWrite{Writer: name, Kind: kind, PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					err := op.Exec(ctx)
					return op.Revision(), err
				})
			if w.Outcome == chaosOK {
				s.record(watchcheck.CacheRead{Key: key, ModRevision: w.Revision, Start: start, End: chaosClock.Add(1)})
			}
		}
		switch p := rng.IntN(100); {
		case p < 35:
			put("cache-put", s.c.Put(v))
		case p < 50:
			put("cache-create", s.c.Create(v))
		case p < 90:
			old, err := s.c.Get(key).Exec(ctx)
			if err != nil {
				continue // not cached; readers check read errors
			}
			if p < 75 {
				old.Tag = tag
				put("cache-update", s.c.Update(old))
				continue
			}
			r.exec(ctx, chaosWrite{Writer: name, Kind: "cache-delete-value", DelKeys: []string{key}, DelValue: true},
				func(ctx context.Context) (int64, error) {
					op := s.c.DeleteValue(old)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 92:
			sp := fmt.Sprintf("%sk/s%d/", r.prefix, sub)
			r.exec(ctx, chaosWrite{Writer: name, Kind: "cache-delete-prefix", DelPrefix: sp},
				func(ctx context.Context) (int64, error) {
					op := s.c.DeletePrefix(sp)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
		default:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "cache-delete", DelKeys: []string{key}},
				func(ctx context.Context) (int64, error) {
					op := s.c.DeleteByKey(key)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
		}
	}
}

// cacheReader reads random keys and sub-prefixes from a cache, records what
// it got, and mutates every value it gets back.
func (r *chaosTrial) cacheReader(ctx context.Context, s *chaosCacheSubj, rng *rand.Rand) {
	for n := 0; ctx.Err() == nil; n++ {
		sub := rng.IntN(chaosSubPrefixes)
		if n%20 == 0 {
			sp := fmt.Sprintf("%sk/s%d/", r.prefix, sub)
			start := chaosClock.Add(1)
			items, err := s.c.GetPrefix(sp).Exec(ctx)
			end := chaosClock.Add(1)
			if err != nil {
				r.violate(s.name, "get prefix %s: %v", sp, err)
				return
			}
			for _, v := range items {
				s.record(watchcheck.CacheRead{Key: v.Key, ModRevision: v.ModRevision(), Start: start, End: end})
				v.Tag = "mutated"
			}
		}
		key := r.key(sub, rng.IntN(chaosSubKeys))
		start := chaosClock.Add(1)
		v, err := s.c.Get(key).Exec(ctx)
		end := chaosClock.Add(1)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			s.record(watchcheck.CacheRead{Key: key, Start: start, End: end})
		case err != nil:
			r.violate(s.name, "get %s: %v", key, err)
			return
		default:
			s.record(watchcheck.CacheRead{Key: key, ModRevision: v.ModRevision(), Start: start, End: end})
			v.Tag = "mutated"
			if again, err := s.c.Get(key).Exec(ctx); err == nil && again.Tag == "mutated" {
				r.violate(s.name, "get %s: mutating a result changed the cache", key)
			}
		}
		time.Sleep(2 * time.Millisecond) // pacing: reads from memory would starve the writers
	}
}

// slowWriter writes the slow watcher's sub-prefix a few times a second.
func (r *chaosTrial) slowWriter(ctx context.Context) {
	client := r.cc.clus.Client(2)
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond): // a few events per second
		}
		key := fmt.Sprintf("%sslow/%d", r.prefix, n%5)
		tag := fmt.Sprintf("slow.%d", n)
		r.exec(ctx, chaosWrite{Writer: "slow", Kind: "put", PutKeys: []string{key}, Tags: []string{tag}},
			func(ctx context.Context) (int64, error) {
				op := storage.NewPutOp(client, key, &chaosValue{Key: key, Tag: tag})
				err := op.Exec(ctx)
				return op.Revision(), err
			})
	}
}

// burst writes n puts as fast as 16 goroutines can, through the members
// other than cut (clients of a cut-off member would only time out).
func (r *chaosTrial) burst(ctx context.Context, n, cut int) {
	round := r.bursts.Add(1) // tags stay unique when a run bursts twice
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		client := r.cc.clus.Client((cut + 1 + g%2) % len(r.cc.clus.Members))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n) && ctx.Err() == nil; i = next.Add(1) {
				key := fmt.Sprintf("%sburst/%d", r.prefix, i%100)
				tag := fmt.Sprintf("burst.%d.%d", round, i)
				r.exec(ctx, chaosWrite{Writer: "burst", Kind: "put", PutKeys: []string{key}, Tags: []string{tag}},
					func(ctx context.Context) (int64, error) {
						op := storage.NewPutOp(client, key, &chaosValue{Key: key, Tag: tag})
						err := op.Exec(ctx)
						return op.Revision(), err
					})
			}
		}()
	}
	wg.Wait()
}

// judge waits for quiet and runs every check.
func (r *chaosTrial) judge(ctx context.Context, t *testing.T) chaosResult {
	res := chaosResult{recovery: map[string]storage.Recovery{}}
	cc := r.cc
	r.awaitExpiry(ctx)
	rev, err := cc.revision(ctx)
	if err != nil {
		r.violate("", "read the final revision: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, chaosConverge)
	if err := r.rec.waitReached(tctx, rev); err != nil {
		r.violate("", "ground truth: %v", err)
	}
	cancel()
	if err := cc.hashKV(ctx); err != nil {
		r.violate("", "%v", err)
	}
	truth, err := r.rec.snapshot()
	if err != nil {
		r.violate("", "ground truth: %v", err)
	}
	// The truth must be etcd: its fold equals a fresh read.
	resp, err := cc.direct.Get(ctx, r.prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	fresh := map[string]watchcheck.KV{}
	var freshValues []*chaosValue
	values, err := storage.DecodeGetResponse[*chaosValue](resp)
	require.NoError(t, err)
	for _, v := range values {
		fresh[v.Key] = watchcheck.KV{Value: v.Tag, Version: v.Version()}
		freshValues = append(freshValues, v)
	}
	if msg := chaosCacheDiff(truth, freshValues, true); msg != "" {
		r.violate("", "ground truth differs from etcd at revision %d: %s", resp.Header.Revision, msg)
	}

	for i, w := range r.watches {
		op := r.watchOps[i]
		last := int64(0)
		if in := watchcheck.InPrefix(truth, w.prefix); len(in) > 0 {
			last = in[len(in)-1].Revision
		}
		wctx, cancel := context.WithTimeout(ctx, r.converge(w.name))
		for w.delivered() < last && wctx.Err() == nil {
			select { // the watch catches up; poll with the deadline
			case <-wctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		if r.opt.canary != "" && w.name == "w0" {
			res.unmet = r.canaryUnmet(w, storage.WatchEnded(op), truth)
		}
		op.Close()
		h := w.history()
		res.events += len(h.Events)
		res.recovery[w.name] = storage.WatchRecovery(op)
		select {
		case err := <-op.Error():
			r.violate(w.name, "a recoverable fault was reported: %v", err)
		default:
		}
		if got := w.delivered(); got < last {
			r.violate(w.name, "delivered up to revision %d, the ground truth's last change under %s is at %d",
				got, w.prefix, last)
		}
		if err := watchcheck.Watch(h, truth); err != nil {
			r.violate(w.name, "%v", err)
		}
		final := map[string]watchcheck.KV{}
		for k, kv := range fresh {
			if strings.HasPrefix(k, w.prefix) {
				final[k] = kv
			}
		}
		if err := watchcheck.Replay(h, final); err != nil && w.delivered() >= last {
			r.violate(w.name, "%v", err)
		}
		t.Logf("chaos %d: %s (member %d): %d events, %d restarts recorded (%d internal, %d not recordable), recovery %+v",
			r.opt.seed, w.name, w.member, len(h.Events), len(h.Restarts), w.restarts, w.dropped, res.recovery[w.name])
	}
	for _, s := range r.caches {
		sctx, cancel := context.WithTimeout(ctx, r.converge(s.name))
		if msg := r.cacheConverges(sctx, s, true); msg != "" {
			r.violate(s.name, "after quiet: %s", msg)
		}
		cancel()
		select {
		case err := <-s.c.Error():
			r.violate(s.name, "a recoverable fault was reported: %v", err)
		default:
		}
		s.mu.Lock()
		reads := slices.Clone(s.reads)
		s.mu.Unlock()
		if err := watchcheck.CacheMonotonic(reads); err != nil {
			r.violate(s.name, "%v", err)
		}
		res.recovery[s.name] = storage.CacheRecovery(s.c)
		t.Logf("chaos %d: cache %s (member %d): %d reads checked, recovery %+v",
			r.opt.seed, s.name, s.member, len(reads), res.recovery[s.name])
	}
	r.mu.Lock()
	writes := slices.Clone(r.writes)
	r.mu.Unlock()
	for _, msg := range chaosCheckWrites(writes, truth) {
		r.violate("", "%s", msg)
	}
	res.writes = len(writes)
	outcomes := map[string]int{}
	for _, w := range writes {
		outcomes[w.Outcome]++
	}
	t.Logf("chaos %d: writes %v, %d ground-truth events, compacted %d times", r.opt.seed, outcomes, len(truth), len(r.compact))
	r.mu.Lock()
	res.viol = slices.Clone(r.viol)
	r.mu.Unlock()
	return res
}

// awaitExpiry waits, once the writers stopped, until no key holds a value
// written with a TTL: until then etcd still changes (expiries), and the
// judge compares the watches, the caches and etcd at one final state.
func (r *chaosTrial) awaitExpiry(ctx context.Context) {
	r.mu.Lock()
	ttl := map[string]bool{}
	for _, w := range r.writes {
		for _, tag := range w.Tags {
			ttl[tag] = w.TTL
		}
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	for {
		rev, err := r.cc.revision(ctx)
		if err == nil {
			err = r.rec.waitReached(ctx, rev)
		}
		if err != nil {
			r.violate("", "waiting for TTL keys to expire: %v", err)
			return
		}
		truth, _ := r.rec.snapshot()
		live := map[string]string{}
		for _, t := range truth {
			live[t.Key] = t.Value // "" after a delete
		}
		n := 0
		for _, tag := range live {
			if ttl[tag] {
				n++
			}
		}
		if n == 0 {
			return
		}
		select { // leases expire by themselves; poll with the deadline
		case <-ctx.Done():
			r.violate("", "%d keys with a TTL still exist %v after the writes stopped", n, chaosConverge)
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// chaosCheckWrites checks the writes against the ground truth: every
// acknowledged put is there at its revision, every acknowledged delete left
// its keys absent at its revision, no definitely failed write left a value,
// no value was written twice or by nobody, and every delete is explained by
// a write or by the expiry of a TTL put.
func chaosCheckWrites(writes []chaosWrite, truth []watchcheck.Truth) []string {
	var msgs []string
	fail := func(format string, args ...any) {
		if len(msgs) < 20 {
			msgs = append(msgs, fmt.Sprintf(format, args...))
		}
	}
	byTag := map[string]watchcheck.Truth{}
	byKey := map[string][]watchcheck.Truth{}
	for _, t := range truth {
		byKey[t.Key] = append(byKey[t.Key], t)
		if t.Type != storage.EventTypePut {
			continue
		}
		if _, dup := byTag[t.Value]; dup {
			fail("value %s written twice (again at %s)", t.Value, watchcheck.FormatTruth(t))
		}
		byTag[t.Value] = t
	}
	absent := func(key string, rev int64) bool {
		var last *watchcheck.Truth
		for i, t := range byKey[key] {
			if t.Revision > rev {
				break
			}
			last = &byKey[key][i]
		}
		return last == nil || last.Type == storage.EventTypeDelete
	}
	writeOf := map[string]chaosWrite{}
	for _, w := range writes {
		for i, tag := range w.Tags {
			writeOf[tag] = w
			t, found := byTag[tag]
			switch {
			case w.Outcome == chaosFailed && found:
				fail("write %d (%s %s) failed with %q, yet %s holds its value", w.ID, w.Kind, w.PutKeys[i], w.Err, watchcheck.FormatTruth(t))
			case w.Outcome == chaosOK && !found:
				fail("acknowledged write %d (%s %s at %d) is not in the ground truth", w.ID, w.Kind, w.PutKeys[i], w.Revision)
			case w.Outcome == chaosOK && (t.Key != w.PutKeys[i] || t.Revision != w.Revision):
				fail("acknowledged write %d (%s %s at %d) is in the ground truth as %s", w.ID, w.Kind, w.PutKeys[i], w.Revision, watchcheck.FormatTruth(t))
			}
		}
		if w.Outcome != chaosOK {
			continue
		}
		for _, k := range w.DelKeys {
			if w.DelValue && !slices.ContainsFunc(byKey[k], func(t watchcheck.Truth) bool {
				return t.Revision == w.Revision && t.Type == storage.EventTypeDelete
			}) {
				fail("acknowledged write %d (%s %s at %d) has no delete in the ground truth", w.ID, w.Kind, k, w.Revision)
			}
			if !absent(k, w.Revision) {
				fail("acknowledged write %d (%s %s at %d): the key exists at that revision", w.ID, w.Kind, k, w.Revision)
			}
		}
		if w.DelPrefix != "" {
			for k := range byKey {
				if strings.HasPrefix(k, w.DelPrefix) && !absent(k, w.Revision) {
					fail("acknowledged write %d (%s %s at %d): %s exists at that revision", w.ID, w.Kind, w.DelPrefix, w.Revision, k)
				}
			}
		}
	}
	deletes := func(w chaosWrite, key string) bool {
		return slices.Contains(w.DelKeys, key) || (w.DelPrefix != "" && strings.HasPrefix(key, w.DelPrefix))
	}
	for key, events := range byKey {
		for i, t := range events {
			if t.Type == storage.EventTypePut {
				if _, ok := writeOf[t.Value]; !ok {
					fail("%s holds %q, which no write wrote", watchcheck.FormatTruth(t), t.Value)
				}
				continue
			}
			if i > 0 && writeOf[events[i-1].Value].TTL {
				continue // expired with its lease (or deleted: either is fine)
			}
			if !slices.ContainsFunc(writes, func(w chaosWrite) bool {
				return deletes(w, key) && (w.Outcome == chaosUnknown || w.Outcome == chaosOK && w.Revision == t.Revision)
			}) {
				fail("%s: no write deleted it and it had no TTL", watchcheck.FormatTruth(t))
			}
		}
	}
	return msgs
}

// dump writes the run's logs for a failure and returns the folder.
func (r *chaosTrial) dump(t *testing.T) string {
	truth, _ := r.rec.snapshot()
	r.mu.Lock()
	files := map[string][]any{
		"writes":     chaosLines(r.writes),
		"faults":     chaosLines(r.faults),
		"violations": chaosLines(r.viol),
		"truth":      chaosLines(truth),
		"compacted":  chaosLines(r.compact),
	}
	r.mu.Unlock()
	for _, w := range r.watches {
		h := w.history()
		files["watch-"+w.name] = chaosLines(h.Events)
		files["watch-"+w.name+"-restarts"] = append([]any{map[string]any{"prefix": h.Prefix, "read_rev": h.ReadRev}},
			chaosLines(h.Restarts)...)
	}
	for _, s := range r.caches {
		s.mu.Lock()
		files["cache-"+s.name+"-reads"] = chaosLines(s.reads)
		s.mu.Unlock()
	}
	dir, err := chaosDump(r.opt.seed, files)
	if err != nil {
		t.Logf("chaos %d: writing the logs: %v", r.opt.seed, err)
	}
	return dir
}

// canaryUnmet says which precondition of the run's canary did not occur on
// w (the broken watch), or "" when it did: the broken path was taken in a
// way that changes what the watch delivers, so the checkers must catch it.
// ended tells whether w's run had ended by itself before Close.
func (r *chaosTrial) canaryUnmet(w *chaosWatchRec, ended bool, truth []watchcheck.Truth) string {
	starts, ahead := w.evidence()
	changed := map[int64]bool{} // revisions with a change under the watched prefix
	for _, t := range watchcheck.InPrefix(truth, w.prefix) {
		changed[t.Revision] = true
	}
	skipsChanges := func(a chaosAhead) bool {
		for rev := a.Reached + 1; rev <= a.From; rev++ {
			if changed[rev] {
				return true
			}
		}
		return false
	}
	r.mu.Lock()
	compacted := slices.Clone(r.compact)
	r.mu.Unlock()
	switch r.opt.canary {
	case "resume-from-header":
		// A resume from a header revision ahead of the last delivered event,
		// past changes never delivered.
		if slices.ContainsFunc(ahead, skipsChanges) {
			return ""
		}
		return fmt.Sprintf("precondition not met: no resume of %s started from a revision ahead of its last delivered event "+
			"past undelivered changes (%d resumes ahead, none skipping a change)", w.name, len(ahead))
	case "no-relist":
		// A compaction response met: the canary resumes after the compact
		// revision - 1, past changes never delivered.
		if slices.ContainsFunc(ahead, func(a chaosAhead) bool { return slices.Contains(compacted, a.From+1) && skipsChanges(a) }) {
			return ""
		}
		return fmt.Sprintf("precondition not met: %s never met a compaction past undelivered changes (%d compactions, %d resumes ahead)",
			w.name, len(compacted), len(ahead))
	case "watch-from-read-rev":
		// A watch started at a revision holding a change, which starting
		// one revision early delivers again.
		if slices.ContainsFunc(starts, func(rev int64) bool { return changed[rev] }) {
			return ""
		}
		return fmt.Sprintf("precondition not met: no watch of %s started after a revision holding a change (starts %v)", w.name, starts)
	case "closed-is-end":
		if ended {
			return ""
		}
		return fmt.Sprintf("precondition not met: no watch channel of %s closed (its run never ended)", w.name)
	}
	return fmt.Sprintf("unknown canary %q", r.opt.canary)
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

// TestChaosCanaries breaks watch w0 and cache c0 with each canary in turn,
// under a fault that exercises the broken path, and requires the checkers to
// reject the broken watch's history. A run first proves from its own log
// that the broken path was taken (canaryUnmet); a run where it was not, or
// one too slow to judge, is repeated with another seed, up to
// chaosCanaryTries runs.
func TestChaosCanaries(t *testing.T) {
	cc := newChaosCluster(t)
	cases := []struct {
		canary string
		faults []string
	}{
		{"resume-from-header", []string{"burst"}},
		{"no-relist", []string{"compact"}},
		{"watch-from-read-rev", []string{"partition"}},
		{"closed-is-end", []string{"partition"}},
	}
	for i, c := range cases {
		var res chaosResult
		for try := range chaosCanaryTries {
			res = runChaos(t, cc, chaosOptions{seed: uint64(1000 + i + 10*try), faults: c.faults, canary: c.canary,
				converge: 4 * time.Second})
			t.Logf("canary %s, run %d: %s", c.canary, try, res.summary)
			for _, v := range res.viol {
				if v.Subject != "w0" && v.Subject != "c0" {
					t.Errorf("canary %s (seed %d): a healthy subject failed: %s: %s", c.canary, 1000+i+10*try, v.Subject, v.Msg)
				}
			}
			// A run judges the canary once its broken path was taken; a run
			// too slow to judge counts only if it caught the canary anyway.
			if res.unmet == "" && (res.tooSlow == "" || len(res.caught("w0")) > 0) {
				break
			}
		}
		if res.unmet != "" {
			t.Errorf("canary %s: %s, in each of %d runs", c.canary, res.unmet, chaosCanaryTries)
			continue
		}
		caught := res.caught("w0")
		if len(caught) == 0 && res.tooSlow != "" {
			t.Errorf("canary %s: every run of %d was too slow to judge (last: %s)", c.canary, chaosCanaryTries, res.tooSlow)
			continue
		}
		if len(caught) == 0 {
			t.Errorf("canary %s was not caught: the checkers accepted watch w0's history (other violations: %v)", c.canary, res.viol)
			continue
		}
		t.Logf("canary %s caught on w0: %s", c.canary, caught[0])
		t.Logf("canary %s on cache c0: %d violations %v", c.canary, len(res.caught("c0")), res.caught("c0"))
	}
}
