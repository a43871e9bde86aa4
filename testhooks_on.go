//go:build storage_testhooks

package storage

// The test hooks, built only with the storage_testhooks tag (make test and
// make chaos-canary pass it; testhooks_off.go is the normal build's). Tests
// set them through export_hooks_test.go before a run starts.

import (
	clientv3 "go.etcd.io/etcd/client/v3"
)

// testHooks holds what tests set on a watcher.
type testHooks struct {
	// canary breaks the watch on purpose, for tests that must prove the
	// chaos test catches such bugs.
	canary canary
	// onRestart is called from the goroutine that delivers: before a read's
	// items are delivered (readRev the read's revision; lastRev 0 for the
	// initial read, else the revision the watch had reached) and before the
	// watch resumes after a failure (lastRev the revision it resumes after,
	// readRev 0). The chaos test needs it to place internal restarts in a
	// delivered history.
	onRestart func(lastRev, readRev int64)
	// onPage is called by a paged read after each page that has more to
	// come: tests compact there.
	onPage func()
	// onLoaded is called by a cache's reset with every item of its read
	// held, before it builds its tree from them: the peak of memory during
	// Start, as the build releases each item it has copied.
	onLoaded func()
}

// canary names a deliberately broken watch behaviour.
type canary int

const (
	canaryNone             canary = iota
	canaryResumeFromHeader        // resume from the response header, which can run ahead of events
	canaryNoRelist                // on compaction, skip to the compact revision without re-reading
	canaryWatchFromReadRev        // watch from the read revision instead of the next one
	canaryClosedIsEnd             // treat the end of a watch channel as the end of the stream
)

func (h testHooks) restarted(lastRev, readRev int64) {
	if h.onRestart != nil {
		h.onRestart(lastRev, readRev)
	}
}

func (h testHooks) betweenPages() {
	if h.onPage != nil {
		h.onPage()
	}
}

func (h testHooks) loaded() {
	if h.onLoaded != nil {
		h.onLoaded()
	}
}

func (h testHooks) watchAfter(rev int64) int64 {
	if h.canary == canaryWatchFromReadRev {
		return rev - 1
	}
	return rev
}

func (h testHooks) skipsCompaction(resp clientv3.WatchResponse) (int64, bool) {
	if h.canary == canaryNoRelist && resp.CompactRevision != 0 {
		return resp.CompactRevision - 1, true // skips what was compacted
	}
	return 0, false
}

func (h testHooks) resumeAfter(lastEvent int64, resp clientv3.WatchResponse) int64 {
	if h.canary == canaryResumeFromHeader {
		return resp.Header.GetRevision()
	}
	return lastEvent
}

func (h testHooks) endsOnClosedChannel() bool { return h.canary == canaryClosedIsEnd }
