//go:build !storage_testhooks

package storage

// The test hooks of a normal build: none. Built with the storage_testhooks
// tag (make test does), testhooks_on.go replaces these with hooks that tests
// set, including the canaries that break the watch on purpose; here every
// hook is an empty method the compiler inlines away, so no hook or canary
// code reaches a program that imports the package.

import (
	clientv3 "go.etcd.io/etcd/client/v3"
)

// testHooks is empty outside tests.
type testHooks struct{}

// restarted is called before a read's items are delivered and before a
// resume (see testhooks_on.go).
func (testHooks) restarted(lastRev, readRev int64) {}

// betweenPages is called by a paged read after each page with more to come.
func (testHooks) betweenPages() {}

// loaded is called by a cache's reset with the read's items held, before it
// builds its tree from them.
func (testHooks) loaded() {}

// watchAfter is the revision a watch starts after: the one it reached.
func (testHooks) watchAfter(rev int64) int64 { return rev }

// skipsCompaction reports whether a compaction response is to be skipped
// instead of re-read, and the revision to resume after.
func (testHooks) skipsCompaction(clientv3.WatchResponse) (int64, bool) { return 0, false }

// resumeAfter is the revision to resume after, given the last delivered
// event's: that one.
func (testHooks) resumeAfter(lastEvent int64, _ clientv3.WatchResponse) int64 { return lastEvent }

// endsOnClosedChannel reports whether a closed watch channel ends the run
// silently.
func (testHooks) endsOnClosedChannel() bool { return false }
