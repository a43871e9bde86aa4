package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// watcher is the list-and-watch loop that WatchOp and Cache share: read the
// key or prefix, deliver it, watch from the next revision; on a recoverable
// failure back off and resume from the last delivered revision; on
// compaction re-read and deliver the difference. It delivers raw etcd data to
// a sink; decoding is the sink's business.
type watcher struct {
	client *clientv3.Client
	key    string              // the key, or the start of the prefix range
	end    string              // "" for one key, else the end of the prefix range
	opts   []clientv3.OpOption // the caller's extra watch options
	// runs is the lifecycle of the watch: its current run, Error() and
	// the name of the watch in errors ("watch prefix /a/").
	runs
	// maxPending bounds the backlog of a slow handler (a field so that
	// white-box tests can lower it).
	maxPending int
	// hooks are the test hooks: empty in a normal build (testhooks_off.go).
	hooks testHooks

	// rereadc asks the run to re-read, as after a compaction (Cache.Verify
	// sends, without blocking; the run's receiver takes it).
	rereadc chan struct{}

	// Counters of the library's own recovery paths, read by tests: clientv3
	// resumes some faults by itself, so events arriving prove nothing.
	resumes  atomic.Int64 // watches restarted after a failure
	relists  atomic.Int64 // re-reads after a compaction
	progress atomic.Int64 // progress notifications that moved the revision
	backlogs atomic.Int64 // streams cancelled because the handler lagged
	repeats  atomic.Int64 // events at or below the last delivered one, dropped
	// maxPendingSeen is the largest backlog observed, in events.
	maxPendingSeen atomic.Int64
	// reading is true while a read (initial or re-read) is in flight.
	reading atomic.Bool
	// progressRev is the revision the latest progress notification moved
	// the watch to.
	progressRev atomic.Int64
}

// sink receives what a watcher reads, in revision order. An error returned
// by a sink stops the run and is reported.
type sink interface {
	// reset delivers a whole read at rev: the first read, or a re-read after
	// etcd compacted past the last delivered revision. kvs are the
	// sink's: the cache clears them as it copies them.
	reset(ctx context.Context, kvs []*mvccpb.KeyValue, rev int64) error
	// apply delivers the events of one watch response.
	apply(ctx context.Context, events []*clientv3.Event) error
	// progressed reports that every change up to rev has been delivered.
	progressed(rev int64)
	runEnd
}

const (
	// readPageSize is the page size of the reads; halved when a page
	// exceeds the client's receive limit.
	readPageSize = 1000
	// maxPending is how many received events may wait for a slow handler
	// before the watch cancels its stream (see watchFrom).
	maxPending  = 1000
	backoffBase = 50 * time.Millisecond
	backoffMax  = 2 * time.Second
)

var (
	// errClosed is the cancel cause of a run stopped by Close: its end is
	// not an error to report.
	errClosed = errors.New("watch closed")
	// errWatchClosed is a watch channel that closed: clientv3 closes it
	// after an error response, and sometimes after a dropped stream without
	// one. A closed channel never blocks again, so it always ends a watch.
	errWatchClosed = errors.New("watch channel closed")
	// errBacklog is a watch stream cancelled because the handler fell more
	// than maxPending events behind.
	errBacklog = errors.New("handler backlog exceeded")
	// errCompacted marks a watch that must re-read: etcd compacted past the
	// revision it would resume from.
	errCompacted = errors.New("revision compacted")
	// errClientClosed is a run stopped because its etcd client was closed.
	errClientClosed = errors.New("etcd client closed")
	// errReread is a re-read asked for by Cache.Verify; the loop handles it
	// as a compaction.
	errReread = fmt.Errorf("re-read requested: %w", errCompacted)
)

// stopError marks an error that ends a run: retrying cannot help.
type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }
func (e stopError) Unwrap() error { return e.err }

func newWatcher(client *clientv3.Client, key string, prefix bool, opts []clientv3.OpOption) *watcher {
	w := &watcher{client: client, key: key, opts: opts, runs: newRuns("watch " + key), maxPending: maxPending,
		rereadc: make(chan struct{}, 1)}
	if prefix {
		w.key, w.end = prefixRange(key)
		w.what = "watch prefix " + key
	}
	return w
}

// start reads and delivers the initial state, then runs the watch in a
// goroutine governed by ctx (see runs.start).
func (w *watcher) start(ctx context.Context, s sink) error {
	if err := w.checkOptions(); err != nil {
		return err
	}
	run := &watchRun{sink: s}
	run.md, _ = metadata.FromOutgoingContext(watchContext(ctx))
	first := func(ctx context.Context) (int64, error) {
		select {
		case <-w.rereadc: // asked of an earlier run: this one reads anyway
		default:
		}
		return w.read(ctx, s, 0)
	}
	return w.runs.start(ctx, run, first, func(ctx context.Context, rev int64) { w.loop(ctx, run, s, rev) })
}

// loop is the run's goroutine: watch, and on failure either re-read
// (compaction), back off and resume (recoverable), or stop (everything else).
func (w *watcher) loop(ctx context.Context, run *watchRun, s sink, rev int64) {
	var failures int
	relist, resuming := false, false
	for {
		var err error
		if relist {
			w.reading.Store(true) // before the count: tests read both
			w.relists.Add(1)
			var newRev int64
			if newRev, err = w.read(ctx, s, rev); err == nil {
				rev, failures, relist, resuming = newRev, 0, false, false
				continue
			}
		} else {
			if resuming {
				w.hooks.restarted(rev, 0)
			}
			resuming = false
			err = w.watchFrom(ctx, s, &rev, &failures)
		}
		switch {
		case ctx.Err() != nil:
			w.stopRun(ctx, run, rev, fmt.Errorf("%s: %w", w.what, context.Cause(ctx)))
			return
		case errors.Is(err, errCompacted):
			relist = true
			w.restarting(rev, err, relist)
			continue
		case isStop(err):
			w.stopRun(ctx, run, rev, err)
			return
		}
		if w.hooks.endsOnClosedChannel() {
			return // as a naive "for resp := range wch" loop ends, silently
		}
		w.resumes.Add(1)
		w.restarting(rev, err, relist)
		resuming = true
		if !sleepCtx(ctx, backoff(failures)) {
			w.stopRun(ctx, run, rev, fmt.Errorf("%s: %w", w.what, context.Cause(ctx)))
			return // the backoff was interrupted: the run ends now
		}
		failures++
	}
}

// watchFrom watches from rev+1 and delivers until the watch fails, moving
// rev to the last delivered revision. It always returns an error.
//
// A receiver goroutine moves responses from clientv3's channel into a queue
// that this goroutine delivers from. clientv3 buffers watch responses without
// limit while the receiver lags, so the queue is the one place the backlog of
// a slow handler can be bounded: past maxPending events the receiver cancels
// the stream, and once the handler has caught up the loop resumes from the
// last delivered revision (re-reading if etcd compacted meanwhile).
func (w *watcher) watchFrom(ctx context.Context, s sink, rev *int64, failures *int) error {
	// A member cut off from its peers ends a watch that requires a leader
	// with ErrNoLeader; a plain watch would stay silent until it heals.
	wctx, cancel := context.WithCancel(watchContext(ctx))
	after := w.hooks.watchAfter(*rev) // rev, unless a canary starts early
	opts := append(w.opts[:len(w.opts):len(w.opts)],
		clientv3.WithRev(after+1),
		clientv3.WithProgressNotify(),
		// The server splits a large catch-up into fragments of at most its
		// request limit plus 512 KiB; a response still too large for the
		// client's receive limit makes classify ask for a paged re-read.
		clientv3.WithFragment(),
	)
	if w.end != "" {
		opts = append(opts, clientv3.WithRange(w.end))
	}
	q := &respQueue{ready: make(chan struct{}, 1)}
	wch := w.client.Watch(wctx, w.key, opts...)
	donec := make(chan struct{})
	go func() {
		defer close(donec)
		w.receive(wctx, cancel, wch, q)
	}()
	defer func() {
		cancel()
		<-donec
	}()
	lastEvent := after // the stream asks for the changes after it
	for {
		resp, receipt, err := q.pop(ctx)
		if err != nil {
			return err
		}
		observeQueued(receipt, len(resp.Events))
		if err := w.deliver(ctx, s, resp, rev, &lastEvent); err != nil {
			return err
		}
		*failures = 0
	}
}

// deliver hands one watch response to the sink. It moves rev, the revision
// the watch would resume after, to the last revision delivered (by an event
// or a progress notification), and lastEvent to the last event's revision.
// An error ends the watch.
func (w *watcher) deliver(ctx context.Context, s sink, resp clientv3.WatchResponse, rev, lastEvent *int64) error {
	if skipTo, ok := w.hooks.skipsCompaction(resp); ok {
		*rev = skipTo
		return errWatchClosed
	}
	if err := classify(w.what, resp); err != nil {
		return err
	}
	if resp.IsProgressNotify() {
		// Progress notifications come only when every change up to the
		// header revision has been sent, unlike other responses, whose
		// header can run ahead of their events during a catch-up.
		if h := resp.Header.GetRevision(); h > *rev {
			*rev = h
			w.progress.Add(1)
			w.progressRev.Store(h)
			s.progressed(h)
		}
		return nil
	}
	// An event at or below the last one delivered is a repeat. Servers
	// before etcd 3.5.8 could send a progress notification out of order
	// with events, and clientv3 resumes a dropped stream by itself after
	// the revision of the last response it saw: a stale notification makes
	// it ask again for events already delivered. The guard compares with
	// the last event, not with rev: an event that such a server sent after
	// a notification ahead of it is new, and dropping it would lose it.
	events := resp.Events
	for len(events) > 0 && events[0].Kv.ModRevision <= *lastEvent {
		events = events[1:]
		w.repeats.Add(1)
	}
	if len(events) == 0 {
		return nil
	}
	if err := s.apply(ctx, events); err != nil {
		return stopError{fmt.Errorf("%s: %w", w.what, err)}
	}
	*lastEvent = events[len(events)-1].Kv.ModRevision
	*rev = w.hooks.resumeAfter(*lastEvent, resp)
	return nil
}

// watchContext is the context of a run's watch requests.
func watchContext(ctx context.Context) context.Context {
	return clientv3.WithRequireLeader(ctx)
}

// requestProgress asks etcd for a progress notification on the current
// run's watch stream; it does nothing without a run.
func (w *watcher) requestProgress(ctx context.Context) error {
	w.mu.Lock()
	run := w.run
	w.mu.Unlock()
	if run == nil {
		return nil
	}
	return w.client.RequestProgress(metadata.NewOutgoingContext(ctx, run.md))
}

// requestReread asks the run to re-read the whole key or prefix, as after a
// compaction; a request already pending covers this one.
func (w *watcher) requestReread() {
	select {
	case w.rereadc <- struct{}{}:
	default:
	}
}

// classify sorts out a watch response that ends the watch.
func classify(what string, resp clientv3.WatchResponse) error {
	err := resp.Err()
	switch {
	case resp.CompactRevision != 0 || errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%s: compacted at %d: %w", what, resp.CompactRevision, errCompacted)
	case err == nil:
		return nil
	case status.Code(err) == codes.ResourceExhausted:
		// etcd fragments a catch-up at its own request limit (plus 512 KiB),
		// not at the client's receive limit, so the same response would fail
		// on every resume. A paged re-read, halving its pages on the same
		// error, catches up instead (intermediate versions are not replayed).
		return fmt.Errorf("%s: response exceeds the client's receive limit: %w: %w", what, errCompacted, err)
	case isAuthError(err):
		return stopError{fmt.Errorf("%s: %w", what, err)}
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isStop(err error) bool {
	var stop stopError
	return errors.As(err, &stop)
}

// isAuthError reports errors that retrying cannot fix: the client's
// credentials are wrong or lack permission.
func isAuthError(err error) bool {
	switch status.Code(errors.Unwrap(err)) {
	case codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrInvalidAuthToken) ||
		errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrUserEmpty)
}

// backoff is the wait before retry number failures+1: none for the first,
// then exponential from backoffBase, capped at backoffMax, with jitter so
// that many watches do not retry in step.
func backoff(failures int) time.Duration {
	if failures == 0 {
		return 0
	}
	d := backoffMax
	if failures < 8 {
		d = min(backoffBase<<(failures-1), backoffMax)
	}
	return d/2 + rand.N(d/2+1)
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
