package storage

// Recovery counts the library's own recovery paths of a watch or cache, so
// that fault tests can prove they ran: clientv3 resumes some faults by
// itself, and events arriving prove nothing about the library.
type Recovery struct {
	Resumes  int64 // watches restarted after a failure
	Relists  int64 // re-reads after a compaction
	Progress int64 // progress notifications that moved the resume revision
	Backlogs int64 // streams cancelled because the handler lagged too far
	Repeats  int64 // events at or below the last delivered one, dropped
	// MaxPending is the largest backlog of received, undelivered events seen.
	MaxPending int64
}

func recoveryOf(w *watcher) Recovery {
	return Recovery{Resumes: w.resumes.Load(), Relists: w.relists.Load(), Progress: w.progress.Load(),
		Backlogs: w.backlogs.Load(), Repeats: w.repeats.Load(), MaxPending: w.maxPendingSeen.Load()}
}

// WatchRecovery returns the recovery counters of a WatchOp.
func WatchRecovery[V Value](op WatchOp[V]) Recovery { return recoveryOf(op.(*watchOp[V]).w) }

// CacheRecovery returns the recovery counters of a Cache.
func CacheRecovery[V Value](c Cache[V]) Recovery { return recoveryOf(c.(*cache[V]).w) }

// SetMaxPending lowers the backlog bound of a WatchOp (before Watch).
func SetMaxPending[V Value](op WatchOp[V], n int) { op.(*watchOp[V]).w.maxPending = n }

// Canaries are deliberately broken watch behaviours, by name, for the
// chaos test's canary runs.
var Canaries = map[string]canary{
	"resume-from-header":  canaryResumeFromHeader,
	"no-relist":           canaryNoRelist,
	"watch-from-read-rev": canaryWatchFromReadRev,
	"closed-is-end":       canaryClosedIsEnd,
}

// SetWatchCanary breaks a WatchOp on purpose (before Watch).
func SetWatchCanary[V Value](op WatchOp[V], name string) { op.(*watchOp[V]).w.canary = Canaries[name] }

// SetCacheCanary breaks a Cache's watch on purpose (before Start).
func SetCacheCanary[V Value](c Cache[V], name string) { c.(*cache[V]).w.canary = Canaries[name] }

// SetWatchRestartHook has a WatchOp call f (before Watch) from the goroutine
// that calls the handler: before the items of every read (readRev the read's
// revision, lastRev 0 for the initial read, else the revision reached) and
// before every resume after a failure (lastRev the revision it resumes after,
// readRev 0).
func SetWatchRestartHook[V Value](op WatchOp[V], f func(lastRev, readRev int64)) {
	op.(*watchOp[V]).w.onRestart = f
}

// InitialReadAttempts is how often a watch's initial read starts over when
// etcd compacts between its pages.
const InitialReadAttempts = initialReadAttempts

// SetWatchPageHook has a WatchOp call f (before Watch) between the pages of
// its paged reads, after each page that has more to come.
func SetWatchPageHook[V Value](op WatchOp[V], f func()) { op.(*watchOp[V]).w.betweenPages = f }
