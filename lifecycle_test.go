package storage_test

// Lifecycle tests: Start, Stop, Watch, Close and reads called in any order,
// from any goroutine, while a writer runs. The contract (SEMANTICS.md,
// "Concurrency and lifecycle"): nothing panics or leaks, two handlers of one
// op never run at once, no error of the current run is lost, and a run
// keeps its identity until its goroutine has exited.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcdkit/storage"
)

// The hammer tests run rounds of concurrent calls until lifecycleBudget has
// passed or lifecycleMaxRounds rounds ran. Their verdict does not depend on
// how many rounds a machine manages: every round checks the invariants
// itself.
const (
	lifecycleBudget    = 4 * time.Second
	lifecycleMaxRounds = 400
	lifecycleCallers   = 4  // goroutines calling lifecycle methods in a round
	lifecycleCalls     = 12 // calls per goroutine and round
	lifecycleKeys      = 16 // keys the writers put, all in each txn
	lifecycleWriters   = 3  // goroutines writing meanwhile
)

// goroutinesIn counts the goroutines whose stack holds a frame of fn (a
// qualified function name such as "storage.(*runs).close"). It lets a
// test wait until calls are blocked inside the library without sleeping.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn+"(") {
			count++
		}
	}
	return count
}

// closeFrame is the frame every Close and Stop waits in.
const closeFrame = "storage.(*runs).close"

// startHostWriter has lifecycleWriters goroutines put new values to
// lifecycleKeys keys under prefix, all in one txn, again and again until the
// returned stop function is called; stop waits for the writers to exit.
func startHostWriter(ctx context.Context, t *testing.T, client *clientv3.Client, prefix string) (stop func()) {
	t.Helper()
	for i := range lifecycleKeys {
		put(t, client, fmt.Sprintf("%sk%02d", prefix, i), rawHostJSON("w", i))
	}
	done := make(chan struct{})
	var writers sync.WaitGroup
	for range lifecycleWriters {
		writers.Add(1)
		go func() {
			defer writers.Done()
			writeUntil(ctx, t, client, prefix, done)
		}()
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(done); writers.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// writeUntil is one writer of startHostWriter.
func writeUntil(ctx context.Context, t *testing.T, client *clientv3.Client, prefix string, done <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-done:
			return
		default:
		}
		// Every key in one txn: each watch response carries many
		// events, so a run spends long in the sink.
		ops := make([]clientv3.Op, lifecycleKeys)
		for k := range ops {
			ops[k] = clientv3.OpPut(fmt.Sprintf("%sk%02d", prefix, k), rawHostJSON("w", i))
		}
		if _, err := client.Txn(ctx).Then(ops...).Commit(); err != nil && ctx.Err() == nil {
			t.Errorf("writer: %v", err)
			return
		}
	}
}

// blockingHandler is a handler that blocks on the event for key until
// released, and records whether it returned.
type blockingHandler struct {
	key      string
	blocked  chan struct{} // closed once the handler blocks
	release  chan struct{} // closed by unblock to let it return
	returned atomic.Bool
	once     sync.Once
	released sync.Once
}

// unblock lets the handler return; idempotent.
func (b *blockingHandler) unblock() { b.released.Do(func() { close(b.release) }) }

func newBlockingHandler(key string) *blockingHandler {
	return &blockingHandler{key: key, blocked: make(chan struct{}), release: make(chan struct{})}
}

func (b *blockingHandler) handle(e *storage.Event[*host]) error {
	if e.Key != b.key {
		return nil
	}
	b.once.Do(func() {
		close(b.blocked)
		<-b.release
		b.returned.Store(true)
	})
	return nil
}

// goBlockedCloses calls stop (a Close or Stop) from n goroutines and waits
// until all n calls are blocked in the library. It fails the test if one of
// the calls returned first (a Close that does not wait for the run's
// goroutine). Each goroutine sends after() on the returned channel once its
// call returned.
func goBlockedCloses(t *testing.T, n int, stop func(), after func() bool) <-chan bool {
	t.Helper()
	returned := make(chan bool, n)
	for range n {
		go func() {
			stop()
			returned <- after()
		}()
	}
	var early bool
	require.Eventually(t, func() bool {
		if len(returned) > 0 {
			early = true
			return true
		}
		return goroutinesIn(closeFrame) >= n
	}, waitTimeout, time.Millisecond, "%d Close calls blocked", n)
	require.False(t, early, "a Close or Stop returned while its run was still in progress")
	return returned
}

func TestLifecycleConcurrentClosesAllWaitForTheRunToExit(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	op := storage.NewWatchPrefixOp[*host](c, "/lc")
	t.Cleanup(op.Close)
	b := newBlockingHandler("/lc/block")
	t.Cleanup(b.unblock) // runs before Close, should the test fail while the handler blocks
	require.NoError(t, op.Watch(ctx, b.handle))
	putNamed(t, c, "/lc/block", "b")
	waitSignal(t, b.blocked, "handler blocked")

	t.Log("phase 1: two Close calls while the handler blocks; neither may return")
	returned := goBlockedCloses(t, 2, op.Close, b.returned.Load)

	t.Log("phase 2: release the handler; both Close calls return after it")
	b.unblock()
	for range 2 {
		require.True(t, recvValue(t, returned), "a Close returned before the handler did")
	}
}

func TestLifecycleWatchDuringCloseIsRefusedAndLaterErrorsAreKept(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	op := storage.NewWatchPrefixOp[*host](c, "/lc")
	t.Cleanup(op.Close)
	var active, overlaps atomic.Int32
	count := func(h func(*storage.Event[*host]) error) func(*storage.Event[*host]) error {
		return func(e *storage.Event[*host]) error {
			if active.Add(1) > 1 {
				overlaps.Add(1)
			}
			defer active.Add(-1)
			return h(e)
		}
	}
	b := newBlockingHandler("/lc/block")
	t.Cleanup(b.unblock)
	require.NoError(t, op.Watch(ctx, count(b.handle)))
	putNamed(t, c, "/lc/block", "b")
	waitSignal(t, b.blocked, "handler blocked")

	t.Log("phase 1: Watch while a Close waits for the handler is refused")
	returned := goBlockedCloses(t, 1, op.Close, b.returned.Load)
	err := op.Watch(ctx, count(func(*storage.Event[*host]) error { return nil }))
	require.ErrorIs(t, err, storage.ErrWatchAlreadyInProgress)

	t.Log("phase 2: once Close returned, a new run's error reaches Error()")
	b.unblock()
	require.True(t, recvValue(t, returned), "Close returned before the handler did")
	errBoom := errors.New("boom")
	require.NoError(t, op.Watch(ctx, count(func(e *storage.Event[*host]) error {
		if e.Key == "/lc/fail" {
			return errBoom
		}
		return nil
	})))
	putNamed(t, c, "/lc/fail", "f")
	require.ErrorIs(t, recvValue(t, op.Error()), errBoom)
	require.ErrorIs(t, op.Watch(ctx, ignoreEvent), storage.ErrWatchAlreadyInProgress, "the stopped run is in progress until Close")
	require.Zero(t, overlaps.Load(), "two handlers ran at once")
}

// ignoreEvent is a handler that accepts every event.
func ignoreEvent(*storage.Event[*host]) error { return nil }

func TestLifecycleCloseThenWatchInsideTheHandlerIsRefused(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	putNamed(t, c, "/lc/a", "a")
	op := storage.NewWatchPrefixOp[*host](c, "/lc")
	t.Cleanup(op.Close)
	var active, overlaps atomic.Int32
	var restarted atomic.Bool
	inner := make(chan error, 1)
	var handle func(e *storage.Event[*host]) error
	handle = func(e *storage.Event[*host]) error {
		if active.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer active.Add(-1)
		if e.Key == "/lc/restart" && restarted.CompareAndSwap(false, true) {
			op.Close()
			inner <- op.Watch(ctx, handle)
		}
		return nil
	}
	require.NoError(t, op.Watch(ctx, handle))
	putNamed(t, c, "/lc/restart", "r")
	require.ErrorIs(t, recvValue(t, inner), storage.ErrWatchAlreadyInProgress,
		"the run closed from inside its handler is in progress until the handler returned")
	require.Zero(t, overlaps.Load(), "two handlers ran at once")

	t.Log("the run ends once the handler returned: Watch works again")
	rec := newEventQueue()
	require.Eventually(t, func() bool { return op.Watch(ctx, rec.handle) == nil }, waitTimeout, time.Millisecond)
	require.ElementsMatch(t, []string{"/lc/a", "/lc/restart"}, eventKeys(rec.take(t, 2)))
}

// readGate holds the range requests of the client it is installed in while
// held, whatever their context: a read that etcd is slow to answer.
type readGate struct {
	held     atomic.Bool
	blocked  chan struct{} // closed when a held read waits
	release  chan struct{} // closed by open to let held reads through
	once     sync.Once
	released sync.Once
}

func newReadGate() *readGate {
	return &readGate{blocked: make(chan struct{}), release: make(chan struct{})}
}

func (g *readGate) dialOption() grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Range" && g.held.Load() {
			g.once.Do(func() { close(g.blocked) })
			<-g.release
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
}

// open lets held reads through; idempotent.
func (g *readGate) open() { g.released.Do(func() { close(g.release) }) }

func TestLifecycleConcurrentStopsAllWaitForAStartInProgress(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	put(t, s.Client(), "/lc/a", rawHostJSON("lc/a", 1))
	gate := newReadGate()
	client := newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second, DialOptions: []grpc.DialOption{gate.dialOption()}})
	c := storage.NewCache(client, "/lc", keyOfHost)
	t.Cleanup(c.Stop)
	t.Cleanup(gate.open) // runs before Stop, should the test fail while the read is held

	t.Log("phase 1: Start, its read held by etcd")
	gate.held.Store(true)
	started := make(chan error, 1)
	go func() { started <- c.Start(ctx) }()
	waitSignal(t, gate.blocked, "Start's read sent")

	t.Log("phase 2: two Stop calls (a shutdown path and a deferred Stop) and a Start")
	returned := goBlockedCloses(t, 2, c.Stop, func() bool { return true })
	require.ErrorIs(t, c.Start(ctx), storage.ErrWatchAlreadyInProgress, "Start while a Stop waits for the run")

	t.Log("phase 3: etcd answers; the stopped Start returns and so do both Stops")
	gate.held.Store(false)
	gate.open()
	require.NoError(t, recvValue(t, started), "a Start stopped during its read")
	for range 2 {
		require.True(t, recvValue(t, returned))
	}
	_, err := c.GetPrefix("").Exec(ctx)
	require.ErrorContains(t, err, "cache not started")

	require.NoError(t, c.Start(ctx))
	got, err := c.GetPrefix("").Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, []*host{hostWithVersion("lc/a", 1, 1)}, got)
}

// hammerRound runs one round of a hammer test: lifecycleCallers goroutines
// each make lifecycleCalls calls of call, with a generator seeded by the
// round and the goroutine. It returns once every goroutine has returned.
func hammerRound(round int, call func(rng *rand.Rand)) {
	var wg sync.WaitGroup
	for g := range lifecycleCallers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(round), uint64(g)))
			for range lifecycleCalls {
				call(rng)
			}
		})
	}
	wg.Wait()
}

// violationLog collects what hammer goroutines found wrong; they
// cannot fail the test themselves.
type violationLog struct {
	mu   sync.Mutex
	msgs []string
}

func (v *violationLog) add(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.msgs) < 20 {
		v.msgs = append(v.msgs, fmt.Sprintf(format, args...))
	}
}

func (v *violationLog) require(t *testing.T) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	require.Empty(t, v.msgs)
}

func TestLifecycleCacheUnderConcurrentStartStopReadsAndWrites(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	const p = "/lc/"
	stopWriter := startHostWriter(ctx, t, client, p)
	c := storage.NewCache(client, p, keyOfHost)
	t.Cleanup(c.Stop)
	var bad violationLog

	// A read or a write-through may find the cache started or not, and a
	// key present or not; a cache whose watch stopped, or a panic, is a
	// bug (the watch's context never ends here).
	readOK := func(what string, err error) {
		if err != nil && !errors.Is(err, storage.ErrNotFound) && !strings.Contains(err.Error(), "cache not started") {
			bad.add("%s: %v", what, err)
		}
	}
	call := func(rng *rand.Rand) {
		key := fmt.Sprintf("%sk%02d", p, rng.IntN(lifecycleKeys))
		switch rng.IntN(6) {
		case 0:
			if err := c.Start(ctx); err != nil && !errors.Is(err, storage.ErrWatchAlreadyInProgress) {
				bad.add("Start: %v", err)
			}
		case 1:
			c.Stop()
		case 2:
			_, err := c.Get(key).Exec(ctx)
			readOK("Get", err)
		case 3:
			_, err := c.GetPrefix("").Exec(ctx)
			readOK("GetPrefix", err)
		case 4:
			err := c.Put(&host{Name: strings.TrimPrefix(key, "/"), Port: rng.IntN(1000)}).Exec(ctx)
			readOK("Put", err)
		case 5: // a shutdown path and a deferred Stop
			stopped := make(chan struct{})
			go func() { defer close(stopped); c.Stop() }()
			c.Stop()
			<-stopped
		}
	}

	start := time.Now()
	rounds := 0
	for ; rounds < lifecycleMaxRounds && time.Since(start) < lifecycleBudget; rounds++ {
		hammerRound(rounds, call)

		// Settled: whether a run is left or not, Start then reads work.
		err := c.Start(ctx)
		if err != nil {
			require.ErrorIs(t, err, storage.ErrWatchAlreadyInProgress, "round %d", rounds)
		}
		_, err = c.GetPrefix("").Exec(ctx)
		require.NoError(t, err, "round %d: Start says a run is in progress, reads disagree", rounds)
		require.Empty(t, c.Error(), "round %d: the watch stopped", rounds)
		bad.require(t)
	}
	t.Logf("%d rounds in %v", rounds, time.Since(start).Round(time.Millisecond))

	stopWriter()
	requireCacheMatchesEtcd(ctx, t, c, client, p)
	c.Stop()
	_, err := c.GetPrefix("").Exec(ctx)
	require.ErrorContains(t, err, "cache not started")
	require.NoError(t, c.Start(ctx))
	requireCacheMatchesEtcd(ctx, t, c, client, p)
	c.Stop()
}

// boomError is the error a hammer handler returns; run names the Watch call
// whose handler returned it.
type boomError struct{ run int64 }

func (e boomError) Error() string { return fmt.Sprintf("boom from run %d", e.run) }

// watchHammer is the state the handlers and callers of the watch hammer
// share.
type watchHammer struct {
	op   storage.WatchOp[*host]
	ctx  context.Context
	bad  *violationLog
	runs atomic.Int64 // ids handed out to Watch calls
	calm atomic.Bool  // set while the test checks: handlers neither fail nor Close

	active atomic.Int32 // handlers running now

	mu        sync.Mutex       // protects the following fields
	lastEntry int64            // the run whose handler was entered last
	failed    map[int64]bool   // runs whose handler returned boomError after the initial read
	closedIn  map[int64]bool   // runs closed from inside their handler
	reported  map[int64]int    // runs by the number of errors received on Error()
	sentinels map[int64]string // run -> the last sentinel key its handler got
}

func (h *watchHammer) handler(run int64) func(e *storage.Event[*host]) error {
	rng := rand.New(rand.NewPCG(uint64(run), 17))
	return func(e *storage.Event[*host]) error {
		if h.active.Add(1) > 1 {
			h.bad.add("run %d: two handlers at once", run)
		}
		defer h.active.Add(-1)
		h.mu.Lock()
		h.lastEntry = run
		if strings.Contains(e.Key, "sentinel") {
			h.sentinels[run] = e.Key
		}
		h.mu.Unlock()
		if h.calm.Load() {
			return nil
		}
		switch rng.IntN(30) {
		case 0:
			h.mu.Lock()
			h.failed[run] = true // undone by Watch if this was its initial read
			h.mu.Unlock()
			return boomError{run}
		case 1:
			h.mu.Lock()
			h.closedIn[run] = true
			h.mu.Unlock()
			h.op.Close()
			if err := h.op.Watch(h.ctx, h.handler(h.runs.Add(1))); !errors.Is(err, storage.ErrWatchAlreadyInProgress) {
				h.bad.add("run %d: Watch after Close inside the handler: %v", run, err)
			}
		case 2:
			runtime.Gosched()
		}
		return nil
	}
}

func (h *watchHammer) watch() {
	run := h.runs.Add(1)
	err := h.op.Watch(h.ctx, h.handler(run))
	var boom boomError
	switch {
	case errors.As(err, &boom) && boom.run == run:
		h.mu.Lock()
		delete(h.failed, run) // returned by Watch, never sent on Error()
		h.mu.Unlock()
	case err != nil && !errors.Is(err, storage.ErrWatchAlreadyInProgress):
		h.bad.add("Watch: %v", err)
	}
}

// drain records every error on Error() until ctx ends.
func (h *watchHammer) drain(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-h.op.Error():
			var boom boomError
			if !errors.As(err, &boom) {
				h.bad.add("Error(): %v", err)
				continue
			}
			h.mu.Lock()
			h.reported[boom.run]++
			if h.reported[boom.run] > 1 {
				h.bad.add("run %d sent %d errors", boom.run, h.reported[boom.run])
			}
			h.mu.Unlock()
		}
	}
}

func TestLifecycleWatchUnderConcurrentWatchCloseAndHandlerCloses(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	const p = "/lc/"
	startHostWriter(ctx, t, client, p)
	var bad violationLog
	h := &watchHammer{op: storage.NewWatchPrefixOp[*host](client, p), ctx: ctx, bad: &bad,
		failed: map[int64]bool{}, closedIn: map[int64]bool{}, reported: map[int64]int{}, sentinels: map[int64]string{}}
	t.Cleanup(h.op.Close)
	drainCtx, stopDrain := context.WithCancel(ctx)
	drained := make(chan struct{})
	go func() { defer close(drained); h.drain(drainCtx) }()
	t.Cleanup(func() { stopDrain(); <-drained })

	start := time.Now()
	rounds := 0
	for ; rounds < lifecycleMaxRounds && time.Since(start) < lifecycleBudget; rounds++ {
		h.calm.Store(false)
		hammerRound(rounds, func(rng *rand.Rand) {
			if rng.IntN(2) == 0 {
				h.watch()
			} else {
				h.op.Close()
			}
		})
		h.calm.Store(true)
		checkSettledWatch(t, h, client, fmt.Sprintf("%ssentinel-%d", p, rounds))
		bad.require(t)
	}
	t.Logf("%d rounds, %d Watch calls in %v", rounds, h.runs.Load(), time.Since(start).Round(time.Millisecond))

	t.Log("after the hammer: a new run delivers, and its error reaches Error()")
	h.op.Close()
	errBoom := errors.New("final")
	got := make(chan string, 1)
	require.NoError(t, h.op.Watch(ctx, func(e *storage.Event[*host]) error {
		if e.Key == p+"final" {
			got <- e.Key
			return errBoom
		}
		return nil
	}))
	stopDrain()
	<-drained
	putNamed(t, client, p+"final", "f")
	require.Equal(t, p+"final", recvValue(t, got))
	require.ErrorIs(t, recvValue(t, h.op.Error()), errBoom)
	h.op.Close()
	bad.require(t)
}

// checkSettledWatch checks the op once no call is in progress: the run left
// over, if any, is the one whose handler ran last. If that run was closed
// from inside its handler, it ends by itself; if it failed, its error
// reached Error(); else it still delivers. A Watch that found no run is
// closed again, so that every round starts alike.
func checkSettledWatch(t *testing.T, h *watchHammer, client *clientv3.Client, sentinel string) {
	t.Helper()
	probe := func() bool {
		err := h.op.Watch(h.ctx, h.handler(h.runs.Add(1)))
		if err == nil {
			h.op.Close()
			return true
		}
		require.ErrorIs(t, err, storage.ErrWatchAlreadyInProgress)
		return false
	}
	if probe() {
		return
	}
	h.mu.Lock()
	run := h.lastEntry
	failed, closedIn := h.failed[run], h.closedIn[run]
	h.mu.Unlock()
	if closedIn {
		require.Eventually(t, probe, waitTimeout, time.Millisecond, "run %d, closed from inside its handler, never ended", run)
		return
	}
	if failed {
		require.Eventually(t, func() bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.reported[run] == 1
		}, waitTimeout, time.Millisecond, "run %d failed and is in progress: its error never reached Error()", run)
		return
	}
	putNamed(t, client, sentinel, "s")
	require.Eventually(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.sentinels[run] == sentinel
	}, waitTimeout, time.Millisecond, "run %d is in progress but does not deliver", run)
}

// subscriptionHammer is a cache subscription of the subscription hammer:
// its handler checks that no two of its runs' handlers overlap, and
// records the sentinels it receives.
type subscriptionHammer struct {
	op       storage.WatchOp[*host]
	active   atomic.Int32
	sentinel atomic.Value // the last sentinel key received
}

func (s *subscriptionHammer) handler(bad *violationLog, calm *atomic.Bool, rng *rand.Rand) func(e *storage.Event[*host]) error {
	var mu sync.Mutex // guards rng, should two handlers overlap (a bug reported above)
	return func(e *storage.Event[*host]) error {
		if s.active.Add(1) > 1 {
			bad.add("%s: two handlers at once", e.Key)
		}
		defer s.active.Add(-1)
		if strings.Contains(e.Key, "sentinel") {
			s.sentinel.Store(e.Key)
		}
		if calm.Load() {
			return nil
		}
		mu.Lock()
		n := rng.IntN(40)
		mu.Unlock()
		switch n {
		case 0:
			return errors.New("boom")
		case 1:
			s.op.Close()
		}
		return nil
	}
}

func TestLifecycleCacheSubscriptionsUnderConcurrentWatchCloseStartAndStop(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	const p = "/lc/"
	startHostWriter(ctx, t, client, p)
	c := storage.NewCache(client, p, keyOfHost)
	t.Cleanup(c.Stop)
	var bad violationLog
	var calm atomic.Bool
	subs := make([]*subscriptionHammer, 3)
	for i := range subs {
		subs[i] = &subscriptionHammer{op: c.Watch(fmt.Sprintf("/lc/%s", []string{"", "s0", "s1"}[i]))}
		t.Cleanup(subs[i].op.Close)
	}
	// Errors a run may end with: its handler's, or the Stop of its cache.
	allowed := func(err error) bool {
		return err == nil || errors.Is(err, storage.ErrWatchAlreadyInProgress) ||
			strings.Contains(err.Error(), "boom") || strings.Contains(err.Error(), "cache not started") ||
			strings.Contains(err.Error(), "cache stopped")
	}
	drainCtx, stopDrain := context.WithCancel(ctx)
	var drains sync.WaitGroup
	for _, s := range subs {
		drains.Add(1)
		go func() {
			defer drains.Done()
			for {
				select {
				case <-drainCtx.Done():
					return
				case err := <-s.op.Error():
					if !allowed(err) {
						bad.add("Error(): %v", err)
					}
				}
			}
		}()
	}
	t.Cleanup(func() { stopDrain(); drains.Wait() })

	call := func(rng *rand.Rand) {
		s := subs[rng.IntN(len(subs))]
		switch rng.IntN(6) {
		case 0:
			if err := c.Start(ctx); err != nil && !errors.Is(err, storage.ErrWatchAlreadyInProgress) {
				bad.add("Start: %v", err)
			}
		case 1:
			c.Stop()
		case 2, 3:
			if err := s.op.Watch(ctx, s.handler(&bad, &calm, rand.New(rand.NewPCG(rng.Uint64(), 1)))); !allowed(err) {
				bad.add("Watch: %v", err)
			}
		case 4:
			s.op.Close()
		case 5:
			if _, err := c.GetPrefix("").Exec(ctx); err != nil && !strings.Contains(err.Error(), "cache not started") {
				bad.add("GetPrefix: %v", err)
			}
		}
	}

	start := time.Now()
	rounds := 0
	for ; rounds < lifecycleMaxRounds && time.Since(start) < lifecycleBudget; rounds++ {
		calm.Store(false)
		hammerRound(rounds, call)
		bad.require(t)

		// Settled: with the cache started, every subscription watches
		// again after Close and delivers a new sentinel.
		calm.Store(true)
		if err := c.Start(ctx); err != nil {
			require.ErrorIs(t, err, storage.ErrWatchAlreadyInProgress, "round %d", rounds)
		}
		for _, s := range subs {
			s.op.Close()
			require.NoError(t, s.op.Watch(ctx, s.handler(&bad, &calm, rand.New(rand.NewPCG(uint64(rounds), 2)))), "round %d", rounds)
		}
		sentinel := fmt.Sprintf("%ss%d/sentinel-%d", p, rounds%2, rounds)
		putNamed(t, client, sentinel, "s")
		for i, s := range subs {
			if i == 2-rounds%2 { // the subscription of the other sub-prefix
				continue
			}
			require.Eventually(t, func() bool { return s.sentinel.Load() == sentinel }, waitTimeout, pollInterval,
				"round %d: subscription %d does not deliver", rounds, i)
		}
	}
	t.Logf("%d rounds in %v", rounds, time.Since(start).Round(time.Millisecond))
	bad.require(t)
}
