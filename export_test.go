package storage

// Recovery counts the library's own recovery paths of a watch or cache, so
// that fault tests can prove they ran: clientv3 resumes some faults by
// itself, and events arriving prove nothing about the library.
type Recovery struct {
	Resumes  int64 // watches restarted after a failure
	Relists  int64 // re-reads after a compaction
	Progress int64 // progress notifications that moved the resume revision
	Backlogs int64 // streams cancelled because the handler lagged too far
	// MaxPending is the largest backlog of received, undelivered events seen.
	MaxPending int64
}

func recoveryOf(w *watcher) Recovery {
	return Recovery{Resumes: w.resumes.Load(), Relists: w.relists.Load(), Progress: w.progress.Load(),
		Backlogs: w.backlogs.Load(), MaxPending: w.maxPendingSeen.Load()}
}

// WatchRecovery returns the recovery counters of a WatchOp.
func WatchRecovery[V Value](op WatchOp[V]) Recovery { return recoveryOf(op.(*watchOp[V]).w) }

// CacheRecovery returns the recovery counters of a Cache.
func CacheRecovery[V Value](c Cache[V]) Recovery { return recoveryOf(c.(*cache[V]).w) }

// SetMaxPending lowers the backlog bound of a WatchOp (before Watch).
func SetMaxPending[V Value](op WatchOp[V], n int) { op.(*watchOp[V]).w.maxPending = n }
