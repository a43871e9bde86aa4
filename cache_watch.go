package storage

// Subscriptions of a cache (Cache.Watch): WatchOps fed by the cache's own
// watch. The cache hands each run what it applied, under its lock; the run's
// goroutine hands that to the handler through a handlerSink, which remembers
// what it delivered, so that after a queue overflow or a re-read of the
// cache it delivers only the difference, as a WatchOp does after a
// compaction.

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// cacheWatchOp is a subscription of a cache: the WatchOp that Cache.Watch
// returns.
type cacheWatchOp[V Value] struct {
	c       *cache[V]
	prefix  string // with its trailing slash, inside the cache's prefix
	prefixb []byte // prefix, to match event keys without converting them
	all     bool   // prefix is the cache's: every event matches
	err     error  // the prefix lies outside the cache's: Watch fails with it
	// maxPending bounds the undelivered events of a run (a field so that
	// tests can lower it).
	maxPending int
	// hooks are the test hooks: empty in a normal build (testhooks_off.go).
	hooks testHooks
	runs

	// Counters of the recovery paths, read by tests.
	resyncs   atomic.Int64 // differences delivered from the cache's contents
	overflows atomic.Int64 // queues dropped because the handler lagged
}

var _ WatchOp[*StoredValue] = (*cacheWatchOp[*StoredValue])(nil)

func (c *cache[V]) Watch(prefix string) WatchOp[V] {
	p := withTrailingSlash(prefix)
	if p == "" {
		p = c.prefix
	}
	o := &cacheWatchOp[V]{c: c, prefix: p, prefixb: []byte(p), all: p == c.prefix, maxPending: maxPending,
		runs: newRuns("cache watch prefix " + p)}
	if !strings.HasPrefix(p, c.prefix) {
		o.err = fmt.Errorf("%s: outside the cache's prefix %s", o.what, c.prefix)
	}
	return o
}

func (o *cacheWatchOp[V]) Watch(ctx context.Context, handle func(e *Event[V]) error) error {
	if o.err != nil {
		return o.err
	}
	s := &subscriber[V]{op: o, h: handlerSink[V]{handle: handle}, ready: make(chan struct{}, 1)}
	run := &watchRun{sink: s}
	return o.start(ctx, run, s.first, func(ctx context.Context, _ int64) { s.follow(ctx, run) })
}

func (o *cacheWatchOp[V]) Close() { o.close() }

func (o *cacheWatchOp[V]) Error() <-chan error { return o.errc }

func (o *cacheWatchOp[V]) PropagateErrors(ctx context.Context, ch chan error) {
	propagateErrors(ctx, o.errc, ch)
}

// subscriber is one run of a subscription. The cache appends the events it
// applied to the run's queue, and the run's goroutine delivers them.
type subscriber[V Value] struct {
	op *cacheWatchOp[V]
	// h and delivered belong to the goroutine that calls the handler (the
	// caller of Watch during the initial state, then the run's goroutine).
	h         handlerSink[V]
	delivered int64 // the revision the handler has been brought to

	mu      sync.Mutex          // protects the following fields
	queue   [][]*clientv3.Event // batches the cache applied, not yet delivered
	pending int                 // events in queue
	// resync is set when the queue overflowed or the cache re-read: the
	// queue is dropped, and the difference between what the handler was
	// given and the cache's contents is delivered next.
	resync bool
	err    error         // why the cache ended the run; nil while it feeds it
	ready  chan struct{} // cap 1: signalled after every change, never closed
}

// first registers the run with the cache and delivers the cached items under
// the prefix at the cache's revision, taken together under the cache's lock:
// every change after that revision reaches the queue, none before it.
func (s *subscriber[V]) first(ctx context.Context) (int64, error) {
	c := s.op.c
	c.mu.Lock()
	if err := c.readableLocked(); err != nil {
		c.mu.Unlock()
		return 0, fmt.Errorf("%s: %w", s.op.what, err)
	}
	kvs, rev := c.watchedLocked(s.op.prefix, nil), c.rev
	if c.subs == nil {
		c.subs = make(map[*subscriber[V]]struct{})
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	return rev, s.deliverRead(ctx, kvs, rev)
}

// follow is the run's goroutine: it delivers what the cache queued until the
// run stops.
func (s *subscriber[V]) follow(ctx context.Context, run *watchRun) {
	for {
		err := s.next(ctx)
		if ctx.Err() != nil {
			err = fmt.Errorf("%s: %w", s.op.what, context.Cause(ctx))
		}
		if err != nil {
			reportStop(ctx, s.op.c.w.client.GetLogger(), zap.String("prefix", s.op.prefix), s.delivered, err)
			s.op.halt(run, err)
			return
		}
	}
}

// next delivers the oldest batch of the queue, or the difference from the
// cache's contents when the queue was dropped.
func (s *subscriber[V]) next(ctx context.Context) error {
	events, resync, err := s.pop(ctx)
	switch {
	case err != nil:
		return err
	case resync:
		return s.resyncNow(ctx)
	}
	if err := s.h.apply(ctx, events); err != nil {
		return fmt.Errorf("%s: %w", s.op.what, err)
	}
	s.delivered = events[len(events)-1].Kv.ModRevision
	return nil
}

// pop returns the oldest batch, waiting for one; resync when the queue was
// dropped; the cache's reason once it ended the run.
func (s *subscriber[V]) pop(ctx context.Context) (events []*clientv3.Event, resync bool, err error) {
	for {
		s.mu.Lock()
		switch {
		case s.err != nil:
			err = s.err
		case s.resync:
			resync = true
		case len(s.queue) > 0:
			events = s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.pending -= len(events)
		}
		s.mu.Unlock()
		if err != nil || resync || events != nil {
			return events, resync, err
		}
		select {
		case <-ctx.Done():
			return nil, false, context.Cause(ctx)
		case <-s.ready:
		}
	}
}

// resyncNow delivers the difference between what the handler was given and
// the cache's contents at its revision. The queue is emptied under the
// cache's lock, so what the cache applies next reaches the queue after it.
func (s *subscriber[V]) resyncNow(ctx context.Context) error {
	c := s.op.c
	c.mu.RLock()
	s.mu.Lock()
	err := s.err
	s.queue, s.pending, s.resync = nil, 0, false
	s.mu.Unlock()
	if err != nil {
		c.mu.RUnlock()
		return err // the cache ended the run; its contents are gone
	}
	kvs, rev := c.watchedLocked(s.op.prefix, s.h.known), c.rev
	c.mu.RUnlock()
	s.op.resyncs.Add(1)
	return s.deliverRead(ctx, kvs, rev)
}

// deliverRead hands the handler a read of the cache at rev: everything the
// first time, the difference from what it delivered afterwards.
func (s *subscriber[V]) deliverRead(ctx context.Context, kvs []*mvccpb.KeyValue, rev int64) error {
	s.op.hooks.restarted(s.delivered, rev)
	if err := s.h.reset(ctx, kvs, rev); err != nil {
		return fmt.Errorf("%s: %w", s.op.what, err)
	}
	s.delivered = rev
	return nil
}

// push queues the events the cache just applied, those under the prefix;
// past maxPending undelivered events it drops the queue and asks for a
// resync. Called with the cache's lock held.
func (s *subscriber[V]) push(events []*clientv3.Event) {
	if !s.op.all {
		events = s.under(events)
		if len(events) == 0 {
			return
		}
	}
	s.mu.Lock()
	defer s.signal()
	defer s.mu.Unlock()
	switch {
	case s.resync || s.err != nil:
		// The resync delivers these too, or nothing is delivered any more.
	case s.pending+len(events) > s.op.maxPending:
		s.queue, s.pending, s.resync = nil, 0, true
		s.op.overflows.Add(1)
	default:
		s.queue = append(s.queue, events)
		s.pending += len(events)
	}
}

// under returns the events under the prefix: events itself when all are,
// else a copy of those that are.
func (s *subscriber[V]) under(events []*clientv3.Event) []*clientv3.Event {
	in := func(ev *clientv3.Event) bool { return bytes.HasPrefix(ev.Kv.Key, s.op.prefixb) }
	i := slices.IndexFunc(events, func(ev *clientv3.Event) bool { return !in(ev) })
	if i < 0 {
		return events
	}
	out := slices.Clone(events[:i])
	for _, ev := range events[i+1:] {
		if in(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// resyncLater drops the queue and asks for a resync: the cache re-read its
// prefix. Called with the cache's lock held.
func (s *subscriber[V]) resyncLater() {
	s.mu.Lock()
	if s.err == nil {
		s.queue, s.pending, s.resync = nil, 0, true
	}
	s.mu.Unlock()
	s.signal()
}

// end makes the run stop with err once it has delivered what it is at.
// Called with the cache's lock held.
func (s *subscriber[V]) end(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err, s.queue, s.pending = fmt.Errorf("%s: %w", s.op.what, err), nil, 0
	}
	s.mu.Unlock()
	s.signal()
}

func (s *subscriber[V]) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// stopped takes the run off the cache: nothing reaches it any more (runEnd).
func (s *subscriber[V]) stopped(error) { s.unsubscribe() }

// ended takes the run off the cache, if still on (runEnd).
func (s *subscriber[V]) ended() { s.unsubscribe() }

func (s *subscriber[V]) unsubscribe() {
	c := s.op.c
	c.mu.Lock()
	delete(c.subs, s)
	c.mu.Unlock()
}

// endSubscriptionsLocked ends every run of the cache's subscriptions with err.
func (c *cache[V]) endSubscriptionsLocked(err error) {
	for s := range c.subs {
		s.end(err)
	}
	c.subs = nil
}

// watchedLocked returns the items under prefix as a read at c.rev would
// return them, in key order: the state the cache's watch has delivered. A
// key written or deleted through the cache at a revision the watch has not
// reached lost its state at c.rev, and the watch will deliver that write: it
// is left out, unless known (the mod revisions a subscriber delivered) holds
// it; then it is given with the mod revision known holds, so that the
// difference passes over it.
func (c *cache[V]) watchedLocked(prefix string, known map[string]int64) []*mvccpb.KeyValue {
	var kvs []*mvccpb.KeyValue
	c.ascendLocked(prefix, func(e entry) bool {
		if e.modRevision <= c.rev {
			// One copy gives the key and the value.
			key, value := e.split()
			kv := append(append(make([]byte, 0, len(key)+len(value)), key...), value...)
			kvs = append(kvs, &mvccpb.KeyValue{Key: kv[:len(key):len(key)], Value: kv[len(key):], Version: e.version, ModRevision: e.modRevision})
		} else if rev, ok := known[e.key()]; ok {
			kvs = append(kvs, &mvccpb.KeyValue{Key: []byte(e.key()), ModRevision: rev})
		}
		return true
	})
	// A key a write-through delete removed is still there as far as the
	// watch has delivered: its delete is on the way. A key that was gone
	// before (deleted at or below c.rev, with the event dropped from this
	// subscriber's queue) is not in removed, so the resync deletes it.
	added := false
	for key, r := range c.removed {
		rev, ok := known[key]
		if !ok || r <= c.rev {
			continue
		}
		if c.items.Has(keyEntry(key)) {
			continue // written through again since: given above
		}
		kvs = append(kvs, &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev})
		added = true
	}
	if added {
		slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) })
	}
	return kvs
}
