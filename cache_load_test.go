//go:build storage_testhooks

package storage_test

// The memory a cache's Start needs while it loads a prefix (cache.go,
// watch_read.go): make test runs it at 10,000 items, make bench at
// 1,000,000 (BENCH_1M=1, as the scale benchmarks).

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// TestCacheStartPeakHeapIsAtMostTwiceTheLoadedCache loads a prefix of small
// values and measures the live heap (after a full collection) at fixed
// points of the load: between pages, and once every item of the read is
// held, before the tree is built from copies of them, which is where the
// load's memory peaks: the build releases each item it has copied. The
// largest of them, less the heap before Start, must be at most twice what
// the started cache holds. The points are the same on any machine, so the
// verdict does not depend on its speed; the heap between two points is not
// seen, so the measured peak is a lower bound of the true one.
func TestCacheStartPeakHeapIsAtMostTwiceTheLoadedCache(t *testing.T) {
	verifyNoLeaks(t)
	n, ctx := 10_000, testContext(t)
	if benchScale1M {
		// Writing and loading 1M items takes minutes: a longer bound for a
		// hung test than testContext's.
		n = 1_000_000
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Minute)
		t.Cleanup(cancel)
	}
	c := newClient(t, storagetest.WithServerConfig(func(cfg *embed.Config) {
		cfg.UnsafeNoFsync = true
		// Every write commits the backend at once. Else the batch of the
		// last writes, held until the backend's next timed commit, is in the
		// heap before Start and may be freed during it, which makes the
		// cache look smaller than it is.
		cfg.BackendBatchLimit = 1
	}))
	const prefix = "/load/"
	written := time.Now()
	benchPutSmall(t, ctx, c, prefix, n)
	t.Logf("wrote %d items in %v", n, time.Since(written).Round(time.Millisecond))

	cache := storage.NewCache(c, prefix, func(v *small) string { return prefix + v.ID })
	const samples = 20  // pages measured at most, besides the built tree
	pages := n/1000 - 1 // pages with more to come: onPage calls
	every := max(1, pages/samples)
	var peak int64
	var paged, loaded int
	measure := func() { peak = max(peak, benchLiveHeap()) }
	storage.SetCacheLoadHooks(cache, func() {
		if paged++; paged%every == 0 {
			measure()
		}
	}, func() {
		loaded++
		measure()
	})
	before := benchLiveHeap()
	require.NoError(t, cache.Start(ctx))
	t.Cleanup(cache.Stop)
	final := benchLiveHeap() - before

	// The hooks ran where the load's memory is: the forcing worked.
	require.Equal(t, pages, paged, "pages read with more to come")
	require.Equal(t, 1, loaded, "trees built")
	vs, err := cache.GetPrefix(prefix).Exec(ctx)
	require.NoError(t, err)
	require.Len(t, vs, n)
	require.Positive(t, final, "live heap held by the started cache")
	t.Logf("%d items: cache holds %d B (%.0f B/item); peak during Start at least %d B over the heap before, %.2fx the cache",
		n, final, float64(final)/float64(n), peak-before, float64(peak-before)/float64(final))
	require.LessOrEqual(t, peak-before, 2*final, "peak live heap during Start over the heap before, against twice the cache's")
}
