package storage

// Freshness of a cache: its revision, waits for a revision, a linearizable
// barrier, which is Sync, and a check against etcd, which is Verify.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// progressInterval is how often a cache asks etcd for a progress
// notification while a caller waits for a revision it has not reached. etcd
// sends one only when it has sent every event up to its current revision,
// so an idle prefix reaches the revision without waiting for a change.
// Kubernetes' watch cache asks at the same rate for its consistent reads.
const progressInterval = 100 * time.Millisecond

// verifyPageSize is the page size of Verify's keys-only reads.
const verifyPageSize = 1000

func (c *cache[V]) Revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

func (c *cache[V]) WaitForRevision(ctx context.Context, rev int64) error {
	if err := c.waitFor(ctx, func() bool { return c.rev >= rev }); err != nil {
		return fmt.Errorf("wait for revision %d: %w", rev, err)
	}
	return nil
}

// waitFor returns nil once reached, called with c.mu held, is true. While it
// is false, it asks etcd for a progress notification every progressInterval
// (shared by every waiter of the cache). It fails when ctx ends, and with the
// cause when the cache is not started or its watch stopped.
func (c *cache[V]) waitFor(ctx context.Context, reached func() bool) error {
	var tick *time.Timer
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		c.mu.Lock()
		if err := c.readableLocked(); err != nil {
			c.mu.Unlock()
			return err
		}
		if reached() {
			c.mu.Unlock()
			return nil
		}
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		changed, at := c.changed, c.rev
		c.mu.Unlock()

		c.requestProgress(ctx)
		if tick == nil {
			tick = time.NewTimer(progressInterval)
		} else {
			tick.Reset(progressInterval)
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("cache %s at revision %d: %w", c.prefix, at, ctx.Err())
		}
	}
}

// signalLocked wakes every waiter: the revision moved, the watch stopped, or
// the cache was stopped or reset. It allocates nothing when nobody waits.
func (c *cache[V]) signalLocked() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// requestProgress asks etcd for a progress notification on the cache's
// watch stream, unless one was asked for less than progressInterval ago. A
// failed request is not an error: the next tick asks again, and a watch that
// failed for good makes the wait fail through readableLocked.
func (c *cache[V]) requestProgress(ctx context.Context) {
	c.progress.mu.Lock()
	if time.Since(c.progress.last) < progressInterval {
		c.progress.mu.Unlock()
		return
	}
	c.progress.last = time.Now()
	c.progress.mu.Unlock()
	_ = c.w.requestProgress(ctx)
}

func (c *cache[V]) Sync(ctx context.Context) error {
	c.mu.RLock()
	err := c.readableLocked()
	c.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	rev, err := c.barrier.revision(ctx, c.currentRevision)
	if err != nil {
		return fmt.Errorf("sync: cache %s: read the current revision: %w", c.prefix, err)
	}
	if err := c.WaitForRevision(ctx, rev); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

// currentRevision reads etcd's current revision with a linearizable read
// that returns no data. Any key gives the store's revision in its header;
// the cache's own first key keeps the read inside the prefix, so a client
// allowed to read only the prefix may make it, and it touches one key where
// a count of the whole prefix would visit every one.
func (c *cache[V]) currentRevision(ctx context.Context) (int64, error) {
	resp, err := c.client.Get(ctx, c.w.key, clientv3.WithCountOnly(), clientv3.WithLimit(1))
	if err != nil {
		return 0, err
	}
	return resp.Header.GetRevision(), nil
}

// revisionBarrier shares etcd revision reads among concurrent Syncs. A
// caller may use only a read that started after it arrived (a read already
// in flight may miss a write that completed just before the caller came),
// so callers that arrive while a read is in flight share the next one: a
// burst of callers costs at most two reads.
type revisionBarrier struct {
	mu      sync.Mutex   // protects the following fields
	running *barrierRead // the read in flight, nil if none
	pending *barrierRead // the next read, joined by callers that came during running
	joined  int          // callers waiting for pending or running, not running a read (tests read it)
}

// barrierRead is one read of the current revision. rev and err are set
// before done is closed.
type barrierRead struct {
	done chan struct{}
	rev  int64
	err  error
}

// revision returns etcd's revision from a read that started after the call.
// The read runs with the context of the caller that starts it; a caller
// whose shared read failed because that context ended, while its own has
// not, starts another.
func (b *revisionBarrier) revision(ctx context.Context, read func(context.Context) (int64, error)) (int64, error) {
	b.mu.Lock()
	if b.running == nil {
		return b.run(ctx, &barrierRead{done: make(chan struct{})}, read)
	}
	if b.pending == nil {
		b.pending = &barrierRead{done: make(chan struct{})}
	}
	r := b.pending
	b.joined++
	defer func() {
		b.mu.Lock()
		b.joined--
		b.mu.Unlock()
	}()
	for {
		prev := b.running
		b.mu.Unlock()
		var prevDone <-chan struct{}
		if prev != nil && prev != r {
			prevDone = prev.done
		}
		select {
		case <-r.done:
			if isContextErr(r.err) && ctx.Err() == nil {
				return b.revision(ctx, read) // the starter's ctx ended, not ours
			}
			return r.rev, r.err
		case <-prevDone:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		b.mu.Lock()
		if b.running == nil && b.pending == r {
			b.pending = nil
			return b.run(ctx, r, read)
		}
	}
}

// run makes r the running read, performs it and publishes its result; b.mu
// is held on entry and released.
func (b *revisionBarrier) run(ctx context.Context, r *barrierRead, read func(context.Context) (int64, error)) (int64, error) {
	b.running = r
	b.mu.Unlock()
	r.rev, r.err = read(ctx)
	b.mu.Lock()
	b.running = nil
	b.mu.Unlock()
	close(r.done)
	return r.rev, r.err
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (c *cache[V]) Verify(ctx context.Context) error {
	snap, err := c.snapshot()
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	stored, err := c.storedModRevisions(ctx, snap.rev)
	if errors.Is(err, rpctypes.ErrCompacted) {
		// etcd no longer has the cache's revision: verify at the current
		// one once the cache has reached it.
		if err := c.Sync(ctx); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if snap, err = c.snapshot(); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		stored, err = c.storedModRevisions(ctx, snap.rev)
	}
	if err != nil {
		return fmt.Errorf("verify: cache %s: read etcd at revision %d: %w", c.prefix, snap.rev, err)
	}
	diff := snap.firstDifference(stored)
	if diff == "" {
		return nil
	}
	if err := c.reread(ctx); err != nil {
		return fmt.Errorf("verify: cache %s at revision %d: %s; re-read: %w", c.prefix, snap.rev, diff, err)
	}
	return fmt.Errorf("verify: cache %s at revision %d: %s; the prefix was re-read", c.prefix, snap.rev, diff)
}

// keyRevision is a key and its mod revision; skip marks a cached key whose
// state at the snapshot's revision the cache no longer knows.
type keyRevision struct {
	key         string
	modRevision int64
	skip        bool
}

// cacheSnapshot is what Verify compares with etcd: the cache's revision,
// every cached key in key order, and the write-through deletes the watch
// has not passed (a key they removed cannot be compared yet).
type cacheSnapshot struct {
	rev        int64
	keys       []keyRevision
	tombstones map[string]int64
	ranges     []rangeTombstone
}

// snapshot copies what Verify needs. A key written through the cache at a
// later revision than the watch reached is marked skip: its state at the
// revision was replaced, so it cannot be compared yet.
func (c *cache[V]) snapshot() (cacheSnapshot, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.readableLocked(); err != nil {
		return cacheSnapshot{}, err
	}
	s := cacheSnapshot{rev: c.rev, keys: make([]keyRevision, 0, c.items.Len()),
		tombstones: maps.Clone(c.tombstones), ranges: slices.Clone(c.rangeTombstones)}
	c.items.Ascend(func(e entry) bool {
		s.keys = append(s.keys, keyRevision{key: e.key(), modRevision: e.modRevision, skip: e.modRevision > c.rev})
		return true
	})
	return s, nil
}

// deletedLater reports whether a write-through delete after the snapshot's
// revision removed key from the cache.
func (s cacheSnapshot) deletedLater(key string) bool {
	return deletedAfter(s.tombstones, s.ranges, key, s.rev)
}

// storedModRevisions reads every key under the prefix at rev, keys only, in
// pages.
func (c *cache[V]) storedModRevisions(ctx context.Context, rev int64) ([]keyRevision, error) {
	var out []keyRevision
	start := c.w.key
	for {
		resp, err := c.client.Get(ctx, start, clientv3.WithRange(c.w.end), clientv3.WithKeysOnly(),
			clientv3.WithLimit(verifyPageSize), clientv3.WithRev(rev))
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			out = append(out, keyRevision{key: string(kv.Key), modRevision: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// firstDifference describes the first key, in key order, whose mod revision
// differs between the snapshot and etcd's keys at the snapshot's revision;
// "" when they agree. Keys whose state the cache no longer knows at that
// revision (written or deleted through it later) are not compared.
func (s cacheSnapshot) firstDifference(stored []keyRevision) string {
	cached := s.keys
	i, j := 0, 0
	for i < len(cached) || j < len(stored) {
		switch {
		case j == len(stored) || (i < len(cached) && cached[i].key < stored[j].key):
			if !cached[i].skip {
				return fmt.Sprintf("%s: cache has mod revision %d, etcd has no such key", cached[i].key, cached[i].modRevision)
			}
			i++
		case i == len(cached) || stored[j].key < cached[i].key:
			if !s.deletedLater(stored[j].key) {
				return fmt.Sprintf("%s: cache has no such key, etcd has mod revision %d", stored[j].key, stored[j].modRevision)
			}
			j++
		default:
			if !cached[i].skip && cached[i].modRevision != stored[j].modRevision {
				return fmt.Sprintf("%s: cache has mod revision %d, etcd has %d", cached[i].key, cached[i].modRevision, stored[j].modRevision)
			}
			i, j = i+1, j+1
		}
	}
	return ""
}

// reread makes the cache's watch re-read the prefix, as after a compaction,
// and returns once the re-read has reached the cache.
func (c *cache[V]) reread(ctx context.Context) error {
	c.mu.RLock()
	before := c.resets
	c.mu.RUnlock()
	c.w.requestReread()
	return c.waitFor(ctx, func() bool { return c.resets > before })
}
