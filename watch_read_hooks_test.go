//go:build storage_testhooks

package storage_test

import (
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// compactNow writes a key outside every watched prefix and compacts etcd to
// that write's revision, so that a read pinned to an older revision fails.
func compactNow(t *testing.T, c *clientv3.Client) int64 {
	t.Helper()
	rev := put(t, c, "/elsewhere", "x")
	_, err := c.Compact(testContext(t), rev, clientv3.WithCompactPhysical())
	require.NoError(t, err)
	return rev
}

func TestWatchInitialReadStartsOverWhenEtcdCompactsBetweenItsPages(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	const p = "/paged/"
	keys := putPages(t, c, p, 1001) // two pages

	op := storage.NewWatchPrefixOp[*host](c, p)
	t.Cleanup(op.Close)
	var pages atomic.Int32
	var compactRev int64
	storage.SetWatchPageHook(op, func() {
		if pages.Add(1) == 1 {
			compactRev = compactNow(t, c) // the first attempt's second page is gone
		}
	})
	rec := newEventQueue()
	require.NoError(t, op.Watch(testContext(t), rec.handle), "Watch failed on a compaction between its pages")
	require.GreaterOrEqual(t, pages.Load(), int32(2), "the read did not start over")
	require.NotZero(t, compactRev)

	events := rec.take(t, len(keys))
	require.Equal(t, keys, eventKeys(events), "each item once, in key order")
	for _, e := range events {
		require.Equal(t, wantPut(e.Key, e.Key, 1, e.Revision), e)
		require.GreaterOrEqual(t, e.Revision, compactRev, "an item of the compacted attempt was delivered")
	}
	require.Len(t, rec.c, 0)
	require.Equal(t, events[0].Revision, events[len(events)-1].Revision, "items from more than one read")
}

func TestWatchInitialReadGivesUpAfterBoundedAttempts(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	const p = "/paged/"
	putPages(t, c, p, 1001)

	op := storage.NewWatchPrefixOp[*host](c, p)
	t.Cleanup(op.Close)
	var pages atomic.Int32
	storage.SetWatchPageHook(op, func() {
		pages.Add(1)
		compactNow(t, c) // every attempt loses its second page
	})
	called := false
	err := op.Watch(testContext(t), func(*storage.Event[*host]) error { called = true; return nil })
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
	require.ErrorContains(t, err, "watch prefix /paged/")
	require.Equal(t, int32(storage.InitialReadAttempts), pages.Load(), "attempts")
	require.False(t, called, "a failed read delivered items")
	require.Empty(t, op.Error())

	storage.SetWatchPageHook(op, nil)
	require.NoError(t, op.Watch(testContext(t), func(*storage.Event[*host]) error { return nil }), "nothing was left running")
}
