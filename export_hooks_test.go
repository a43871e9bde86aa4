//go:build storage_testhooks

package storage

// The setters of the test hooks (testhooks_on.go), for tests built with the
// storage_testhooks tag.

// Canaries are deliberately broken watch behaviours, by name, for the
// chaos test's canary runs.
var Canaries = map[string]canary{
	"resume-from-header":  canaryResumeFromHeader,
	"no-relist":           canaryNoRelist,
	"watch-from-read-rev": canaryWatchFromReadRev,
	"closed-is-end":       canaryClosedIsEnd,
}

// SetWatchCanary breaks a WatchOp on purpose (before Watch).
func SetWatchCanary[V Value](op WatchOp[V], name string) {
	op.(*watchOp[V]).w.hooks.canary = Canaries[name]
}

// SetCacheCanary breaks a Cache's watch on purpose (before Start).
func SetCacheCanary[V Value](c Cache[V], name string) { c.(*cache[V]).w.hooks.canary = Canaries[name] }

// SetWatchRestartHook has a WatchOp call f (before Watch) from the goroutine
// that calls the handler: before the items of every read (readRev the read's
// revision, lastRev 0 for the initial read, else the revision reached) and
// before every resume after a failure (lastRev the revision it resumes after,
// readRev 0).
//
// A cache subscription calls it before the items of its initial state and
// of every difference it delivers from the cache's contents (lastRev the
// revision it had delivered up to, readRev the cache's revision).
func SetWatchRestartHook[V Value](op WatchOp[V], f func(lastRev, readRev int64)) {
	if o, ok := op.(*cacheWatchOp[V]); ok {
		o.hooks.onRestart = f
		return
	}
	op.(*watchOp[V]).w.hooks.onRestart = f
}

// SetWatchPageHook has a WatchOp call f (before Watch) between the pages of
// its paged reads, after each page that has more to come.
func SetWatchPageHook[V Value](op WatchOp[V], f func()) { op.(*watchOp[V]).w.hooks.onPage = f }

// SetCacheLoadHooks has a Cache call onPage (before Start) between the pages
// of its reads, after each page that has more to come, and onLoaded with
// every item of a read held, before it builds its tree from them.
func SetCacheLoadHooks[V Value](c Cache[V], onPage, onLoaded func()) {
	h := &c.(*cache[V]).w.hooks
	h.onPage, h.onLoaded = onPage, onLoaded
}
