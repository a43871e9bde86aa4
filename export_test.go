package storage

// Recovery counts the library's own recovery paths of a watch or cache, so
// that fault tests can prove they ran: clientv3 resumes some faults by
// itself, and events arriving prove nothing about the library.
type Recovery struct {
	Resumes  int64 // watches restarted after a failure
	Relists  int64 // re-reads after a compaction
	Progress int64 // progress notifications that moved the resume revision
	// ProgressRev is the revision the latest of them moved it to.
	ProgressRev int64
	Backlogs    int64 // streams cancelled because the handler lagged too far
	Repeats     int64 // events at or below the last delivered one, dropped
	// MaxPending is the largest backlog of received, undelivered events seen.
	MaxPending int64
}

func recoveryOf(w *watcher) Recovery {
	return Recovery{Resumes: w.resumes.Load(), Relists: w.relists.Load(), Progress: w.progress.Load(),
		ProgressRev: w.progressRev.Load(), Backlogs: w.backlogs.Load(), Repeats: w.repeats.Load(),
		MaxPending: w.maxPendingSeen.Load()}
}

// WatchRecovery returns the recovery counters of a WatchOp. For a cache
// subscription (Cache.Watch), Relists counts the differences delivered from
// the cache's contents (after a re-read of the cache or an overflow) and
// Backlogs the queues dropped because the handler lagged.
func WatchRecovery[V Value](op WatchOp[V]) Recovery {
	if o, ok := op.(*cacheWatchOp[V]); ok {
		return Recovery{Relists: o.resyncs.Load(), Backlogs: o.overflows.Load()}
	}
	return recoveryOf(op.(*watchOp[V]).w)
}

// CacheRecovery returns the recovery counters of a Cache.
func CacheRecovery[V Value](c Cache[V]) Recovery { return recoveryOf(c.(*cache[V]).w) }

// SetMaxPending lowers the backlog bound of a WatchOp or a cache
// subscription (before Watch).
func SetMaxPending[V Value](op WatchOp[V], n int) {
	if o, ok := op.(*cacheWatchOp[V]); ok {
		o.maxPending = n
		return
	}
	op.(*watchOp[V]).w.maxPending = n
}

// CacheSubscribers returns how many runs of subscriptions a Cache feeds.
func CacheSubscribers[V Value](c Cache[V]) int {
	cc := c.(*cache[V])
	cc.mu.RLock()
	defer cc.mu.RUnlock()
	return len(cc.subs)
}

// InitialReadAttempts is how often a watch's initial read starts over when
// etcd compacts between its pages.
const InitialReadAttempts = initialReadAttempts

// WatchEnded reports whether op's run has ended by itself: no run is in
// progress, or its goroutine has exited. Call it before Close, which ends
// the run too. A canary run uses it to prove that closed-is-end met a
// closed watch channel.
func WatchEnded[V Value](op WatchOp[V]) bool {
	w := op.(*watchOp[V]).w
	w.mu.Lock()
	run := w.run
	w.mu.Unlock()
	if run == nil {
		return true
	}
	select {
	case <-run.donec:
		return true
	default:
		return false
	}
}

// SyncJoiners returns how many Sync callers of a Cache wait for a revision
// read that another caller runs.
func SyncJoiners[V Value](c Cache[V]) int {
	b := &c.(*cache[V]).barrier
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.joined
}

// CorruptCacheEntry gives the cached entry of key a wrong mod revision, as a
// bug in the cache's bookkeeping would, and reports whether key was cached.
func CorruptCacheEntry[V Value](c Cache[V], key string, modRevision int64) bool {
	cc := c.(*cache[V])
	cc.mu.Lock()
	defer cc.mu.Unlock()
	e, ok := cc.items.Get(keyEntry(key))
	if ok {
		e.modRevision = modRevision
		cc.items.ReplaceOrInsert(e)
	}
	return ok
}

// DropCacheEntry removes key from the cache without a tombstone, as a lost
// event would, and reports whether it was cached.
func DropCacheEntry[V Value](c Cache[V], key string) bool {
	cc := c.(*cache[V])
	cc.mu.Lock()
	defer cc.mu.Unlock()
	_, ok := cc.items.Delete(keyEntry(key))
	return ok
}

// CacheWaiting reports whether a caller waits for a Cache to move.
func CacheWaiting[V Value](c Cache[V]) bool {
	cc := c.(*cache[V])
	cc.mu.RLock()
	defer cc.mu.RUnlock()
	return cc.changed != nil
}

// WatchReading reports whether a WatchOp's run is inside a read: its first
// read, or a re-read after a compaction.
func WatchReading[V Value](op WatchOp[V]) bool { return op.(*watchOp[V]).w.reading.Load() }
