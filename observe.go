package storage

// What the package reports about itself: the calls into internal/observe,
// which the metrics adapters (storageprom) listen to, and the log lines of
// a watch's recovery, written through the client's own logger
// (clientv3.Config.Logger). With no adapter registered, a report is an
// atomic load and a nil check: no clock is read and nothing allocates.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/etcdkit/storage/internal/observe"
)

func init() { observe.SetGauges(gauges{}) }

// opTimer times one op for the observers; the zero opTimer, returned when
// nobody listens, times nothing. Ops start it in their first line:
//
//	defer startOp(observe.OpGet).done(&err)
type opTimer struct {
	op    observe.Op
	start time.Time
}

func startOp(op observe.Op) opTimer {
	if !observe.Active() {
		return opTimer{}
	}
	return opTimer{op: op, start: time.Now()}
}

// done reports the op with the outcome of *err.
func (t opTimer) done(err *error) {
	if t.start.IsZero() {
		return
	}
	elapsed := time.Since(t.start)
	outcome := outcomeOf(*err)
	for _, o := range observe.Observers() {
		o.Operation(t.op, outcome, elapsed)
	}
}

// outcomeOf maps an op's error to its outcome by the sentinels it wraps. A
// Txn whose compares failed wraps ErrOperationConstraintViolated beside its
// ops' own sentinels, so that one is tested first; an op run alone returns
// its own sentinel only.
func outcomeOf(err error) observe.Outcome {
	switch {
	case err == nil:
		return observe.OK
	case errors.Is(err, ErrDuplicateKeysInTransaction):
		return observe.DuplicateKeys
	case errors.Is(err, ErrOperationConstraintViolated):
		return observe.ConstraintViolated
	case errors.Is(err, ErrAlreadyExists):
		return observe.AlreadyExists
	case errors.Is(err, ErrValueVersionMismatch):
		return observe.VersionMismatch
	case errors.Is(err, ErrNotFound):
		return observe.NotFound
	case isInvalid(err):
		return observe.Invalid
	}
	return observe.Error
}

// isInvalid reports an op refused for what its caller gave it. (Its target
// escapes to the heap: declared in outcomeOf, it would cost an allocation
// on every op, failed or not.)
func isInvalid(err error) bool {
	var invalid invalidError
	return errors.As(err, &invalid) || errors.Is(err, errNilValue)
}

// invalidError is an op refused before any request because of what the
// caller gave it: an option that does not fit, a TTL no lease can carry, a
// key outside a cache's prefix, a delete of the whole keyspace. Its text is
// the wrapped error's.
type invalidError struct{ err error }

func (e invalidError) Error() string { return e.err.Error() }
func (e invalidError) Unwrap() error { return e.err }

// invalidf formats an invalidError.
func invalidf(format string, args ...any) error {
	return invalidError{fmt.Errorf(format, args...)}
}

func observeEvents(source observe.Source, n int) {
	for _, o := range observe.Observers() {
		o.WatchEvents(source, n)
	}
}

func observeDecodeError() {
	for _, o := range observe.Observers() {
		o.DecodeError()
	}
}

func observeLeaseGrant() {
	for _, o := range observe.Observers() {
		o.LeaseGranted()
	}
}

// receiptTime is when a watch response was received, zero when nobody
// listens (the clock is read for the observers only).
func receiptTime() time.Time {
	if !observe.Active() {
		return time.Time{}
	}
	return time.Now()
}

// observeQueued reports how long a response received at receipt waited for
// the sink. Progress notifications, which carry no event, are not counted.
func observeQueued(receipt time.Time, events int) {
	if receipt.IsZero() || events == 0 {
		return
	}
	wait := time.Since(receipt)
	for _, o := range observe.Observers() {
		o.HandlerQueue(wait)
	}
}

// restarting reports and logs a restart of the watch after err, from the
// revision it had delivered: a re-read after compaction at info (also the
// retry of a re-read that failed, relist still pending), a stream cancelled
// for a lagging handler at warn, any other resume at debug.
func (w *watcher) restarting(rev int64, err error, relist bool) {
	reason, level, msg := observe.RestartResume, zap.DebugLevel, "storage: watch resumes after a failure"
	switch {
	case relist && errors.Is(err, errReread):
		reason, level, msg = observe.RestartRelist, zap.InfoLevel, "storage: cache re-reads: Verify found it differs from etcd"
	case relist:
		reason, level, msg = observe.RestartRelist, zap.InfoLevel, "storage: watch re-reads: etcd compacted past its revision"
	case errors.Is(err, errBacklog):
		reason, level, msg = observe.RestartBacklog, zap.WarnLevel, "storage: watch cancelled its stream: the handler lags; it resumes once the handler caught up"
	}
	for _, o := range observe.Observers() {
		o.WatchRestart(reason)
	}
	w.client.GetLogger().Log(level, msg, w.logKey(), zap.Int64("revision", rev), zap.Error(err))
}

// stopRun reports and logs why run ended (see stopping), then halts it.
func (w *watcher) stopRun(ctx context.Context, run *watchRun, rev int64, err error) {
	w.stopping(ctx, rev, err)
	w.halt(run, err)
}

// stopping reports why a run ended with err, having delivered up to rev,
// and logs at error level a run that ended on its own; a run ended by Close
// is not logged.
func (w *watcher) stopping(ctx context.Context, rev int64, err error) {
	reportStop(ctx, w.client.GetLogger(), w.logKey(), rev, err)
}

// reportStop reports why a run of the watch named by key ended with err,
// having delivered up to rev, and logs at error level a run that ended on
// its own. A watch ended by its owner (Close, or Stop of the cache a
// subscription follows) is counted as closed and not logged.
func reportStop(ctx context.Context, log *zap.Logger, key zap.Field, rev int64, err error) {
	reason := stopReason(ctx, err)
	for _, o := range observe.Observers() {
		o.WatchStopped(reason)
	}
	if reason == observe.StopClosed {
		return
	}
	log.Error("storage: watch stopped", key, zap.Int64("revision", rev),
		zap.String("reason", reason.String()), zap.Error(err))
}

// stopReason classifies the error that ended a run whose context is ctx.
func stopReason(ctx context.Context, err error) observe.Stop {
	var handler handlerError
	switch {
	case errors.Is(err, errClosed), errors.Is(err, errCacheStopped):
		return observe.StopClosed
	case errors.As(err, &handler):
		return observe.StopHandler
	case errors.Is(err, errClientClosed):
		return observe.StopClientClosed
	case isAuthError(err):
		return observe.StopAuth
	case ctx.Err() != nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The last two: a subscription ended because its cache's context did.
		return observe.StopContext
	}
	return observe.StopOther
}

// logKey names the watch's key or prefix in its log lines.
func (w *watcher) logKey() zap.Field {
	switch {
	case w.end == "":
		return zap.String("key", w.key)
	case w.key == "\x00": // prefixRange's start for the empty prefix
		return zap.String("prefix", "")
	}
	return zap.String("prefix", w.key)
}

// liveCaches holds the started caches, for the gauges: a cache joins with
// its first read and leaves when its run ends (Stop), so a stopped cache has
// no series.
var liveCaches sync.Map // cacheGauge -> struct{}

// cacheGauge is a started cache as the gauges read it.
type cacheGauge interface {
	gauge() (prefix string, items int, revision int64)
}

// gauges is the package's observe.Gauges, read when an adapter collects.
type gauges struct{}

// Caches adds up the items of the caches of each prefix and gives the lowest
// revision among them: two caches of one prefix show what the process holds
// and how far behind the slower one is.
func (gauges) Caches() []observe.CacheStat {
	byPrefix := make(map[string]int)
	var stats []observe.CacheStat
	liveCaches.Range(func(k, _ any) bool {
		prefix, items, rev := k.(cacheGauge).gauge()
		i, seen := byPrefix[prefix]
		if !seen {
			byPrefix[prefix] = len(stats)
			stats = append(stats, observe.CacheStat{Prefix: prefix, Items: items, Revision: rev})
			return true
		}
		stats[i].Items += items
		stats[i].Revision = min(stats[i].Revision, rev)
		return true
	})
	return stats
}

// Leases counts the current shared leases of every client by TTL: those
// that have not expired; the leases a group replaced expire by themselves
// and are not current.
func (gauges) Leases() map[int64]int {
	counts := make(map[int64]int)
	now := time.Now()
	leaseManagers.Range(func(_, v any) bool {
		leases := v.(*leaseManager).leases.Load() // copy-on-write: no lock needed
		if leases == nil {
			return true
		}
		for seconds, l := range *leases {
			if l.expires.After(now) {
				counts[seconds]++
			}
		}
		return true
	})
	return counts
}

// gauge is the cache's state as the gauges read it (cacheGauge).
func (c *cache[V]) gauge() (prefix string, items int, revision int64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.items != nil {
		items = c.items.Len()
	}
	return c.prefix, items, c.rev
}
