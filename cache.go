package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/btree"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage/internal/observe"
)

// Cache is a write-through cache that uses Watch operations to stay
// updated. It is most suitable for making range operations on small numbers
// of small values more efficient. Note that since reads are executed from the
// in-memory cache, these caches are not suitable for complex Get operations
// that require OpOptions.
//
// Reads come from memory and return fresh instances: mutating a result never
// changes the cache. Writes go to etcd and, once they succeed, the cache
// holds their result at once, so a caller reads its own writes, also inside a
// Txn. Writes and watch events for one key are ordered by etcd revision: an
// older one never overwrites a newer one.
//
// A cache answers as a read from etcd at the cache's revision would. A key
// whose stored bytes cannot be decoded makes Get of it, and GetPrefix over
// it, fail with the decode error naming the key.
//
// A cache never serves silently stale data: reads before Start, after Stop,
// and after the watch stopped on its own (context ended, closed client)
// return an error. Writes before Start and after Stop are refused with an
// error, and so are writes of a key or prefix outside the cache's prefix.
// DeleteByKey of a key outside the prefix is the exception: it deletes the
// key in etcd, started or not, and leaves the cache alone.
//
// Every method may be called from any goroutine, concurrently with any
// other: two Stop calls at once, a Start while a Stop is in progress, reads
// during Start or Stop. None panics, leaks a goroutine or loses an error.
type Cache[V Value] interface {
	// Start loads the prefix and keeps it current with a watch that follows
	// every rule of [WatchOp.Watch], including re-reading after a
	// compaction. ctx governs the watch: when it ends, reads fail with its
	// error. A second Start without Stop returns an error wrapping
	// [ErrWatchAlreadyInProgress], and so does a Start while a Stop is in
	// progress: it does not wait for the Stop. A Start that a concurrent
	// Stop ends during its initial load returns nil and leaves the cache
	// stopped, as if the Stop had come just after it.
	Start(ctx context.Context) error
	// Put returns an operation that puts a key-value pair into storage.
	// Cache Put, Create and Update write the new version (and a
	// RevisionedValue's mod revision) back into item on success.
	Put(item V, options ...clientv3.OpOption) PutOp[V]
	// Create returns an operation that creates a key value pair with an
	// optional time-to-live. This operation will fail with ErrAlreadyExists
	// if the given key already exists.
	Create(item V, options ...clientv3.OpOption) PutOp[V]
	// Update returns an operation updates an existing key value pair with a
	// new value and an optional time-to-live. This operation will fail with
	// ErrValueVersionMismatch if the stored value's version does not match
	// the given value's version. Note that this operation is equivalent to a
	// create when the item version is 0.
	Update(item V, options ...clientv3.OpOption) PutOp[V]
	// DeleteByKey returns an operation that deletes a single value by key. A
	// key outside the cache's prefix is deleted in etcd and leaves the cache
	// alone.
	DeleteByKey(key string, options ...clientv3.OpOption) DeleteOp
	// DeleteValue returns an operation that deletes a single value if its
	// version matches the given value's version. Its Exec method will return
	// an ErrValueVersionMismatch if the stored value version did not match
	// the given value version.
	DeleteValue(item V, options ...clientv3.OpOption) DeleteValueOp[V]
	// DeletePrefix returns an operation that deletes a multiple values by
	// prefix, which must lie inside the cache's prefix. The empty prefix is
	// refused.
	DeletePrefix(prefix string, options ...clientv3.OpOption) DeleteOp
	// Get returns an operation that returns a single value by key. A key that
	// is not cached, or lies outside the prefix, gives an error wrapping
	// [ErrNotFound].
	Get(key string) GetOp[V]
	// GetPrefix returns an operation that returns multiple values by prefix,
	// in key order. The empty prefix reads every item of the cache.
	GetPrefix(prefix string) GetMultipleOp[V]
	// Stop stops the cache and returns once every goroutine it started has
	// exited. It empties the cache; Start may be called again. Stop is
	// idempotent and safe before Start. Concurrent Stop calls all return
	// only once the watch has exited and the cache is empty; reads during a
	// Stop see the cache either still started or empty.
	Stop()
	// Error reports errors that originate from the cache's watch.
	Error() <-chan error
	// PropagateErrors will propagate errors from the cache's Error() channel
	// to the given error channel in a goroutine until the given context is
	// complete.
	PropagateErrors(ctx context.Context, ch chan error)
	// Revision returns the revision up to which every change under the
	// prefix has reached the cache; 0 before Start and after Stop. Writes
	// through the cache at later revisions are held already, but do not
	// move it: only the watch does.
	Revision() int64
	// WaitForRevision returns nil once Revision() >= rev. It returns an
	// error wrapping ctx's error when ctx ends first, and one wrapping the
	// cause when the cache's watch has stopped or the cache is not started.
	// While it waits, the cache asks etcd for a progress notification about
	// every 100 ms, so that an idle prefix reaches rev without a change
	// under it. A write's Revision() passed here gives read-your-writes
	// across clients.
	WaitForRevision(ctx context.Context, rev int64) error
	// Sync returns once the cache holds every change etcd had committed
	// when Sync was called: reads that follow it see every write that
	// completed before Sync was called, from any client. It reads etcd's
	// current revision with a linearizable read that returns no data, then
	// waits as WaitForRevision does, and fails as it does. Concurrent Syncs
	// share their reads: a caller joins the next read that starts after it
	// arrived, so a burst of callers costs at most two.
	Sync(ctx context.Context) error
	// Verify compares the cache with etcd at the cache's revision: every
	// key under the prefix with its mod revision, read keys only and in
	// pages. If etcd compacted past that revision, it syncs and compares at
	// the revision it reached. On a difference it re-reads the prefix, as
	// after a compaction, and returns an error naming the first differing
	// key and both mod revisions once the re-read has reached the cache.
	// Keys written or deleted through the cache at revisions its watch has
	// not reached are not compared. Verify fails as WaitForRevision does.
	Verify(ctx context.Context) error
	// Watch returns a WatchOp fed by the cache's own watch for the keys under
	// prefix, which must lie inside the cache's prefix ("" for all of them;
	// a trailing slash is added if missing). However many subscriptions a
	// cache has, it keeps one etcd watch. Use it where a handler wants the
	// changes of what the cache holds; use [NewWatchPrefixOp] for a watch
	// without a cache.
	//
	// The WatchOp keeps the contract of [WatchOp], with these specifics.
	// Watch fails with the cause when the cache is not started or its watch
	// has stopped, and with an error when prefix lies outside the cache's.
	// Otherwise handle first gets a put for every item under the prefix, in
	// key order, with Revision set to the cache's revision at that moment,
	// then every change after that revision that the cache's watch applies,
	// once each, in revision order. A change reaches handle only after the
	// cache has applied it: inside handle, the cache's Get of e.Key returns
	// the event's value or a newer one, and Revision() is at least
	// e.Revision. Writes through the cache are not events until the cache's
	// watch delivers them. A key written through the cache at a revision
	// its watch has not reached is left out of the initial puts; the event
	// of that write brings it.
	//
	// After a re-read of the cache (compaction, or a difference Verify
	// found), handle gets the difference between what it was given and the
	// cache's contents: puts for new or changed keys, deletes for keys that
	// vanished, with Revision set to the cache's revision.
	//
	// A slow handler never blocks the cache, its other subscriptions or the
	// writers: each run of the WatchOp holds at most 1,000 undelivered
	// events. Past that it drops them and, once handle has returned, is
	// brought up to date from the cache's contents as after a re-read, so
	// its queue stays bounded and only intermediate versions are lost. To
	// deliver that difference, each run also remembers the mod revision of
	// every key it delivered, as a WatchOp does: memory that grows with the
	// keys under prefix, not with the rate of change. Decoding errors reach
	// handle as error events naming the key.
	//
	// ctx governs the run's goroutine as for [WatchOp.Watch]. Stop ends
	// every run with an error on its Error() saying the cache stopped; a
	// cache whose watch stopped on its own ends them with an error wrapping
	// that cause. A run that ended so is in progress until Close, as any
	// WatchOp run that stopped on its own. Close, Error and PropagateErrors
	// behave as for [WatchOp], Close from inside handle included.
	Watch(prefix string) WatchOp[V]
}

// writeThrough is what a cache's write ops call: checkWrite before the
// request, writePut or writeDelete after it succeeded.
type writeThrough interface {
	checkWrite(key string) error
	writePut(key string, value []byte, version, revision int64)
	writeDelete(key string, prefix bool, revision int64)
}

var (
	// errNotStarted answers reads and writes of a cache before Start.
	errNotStarted = errors.New("cache not started")
	// errCacheStopped ends the subscriptions of a cache that Stop stopped.
	errCacheStopped = errors.New("cache stopped")
)

// entry is a cached key: its stored bytes and metadata. Values are decoded
// on every read, which gives each caller a fresh instance and answers
// undecodable bytes with the decode error an etcd read would give.
//
// The tree holds entries by value, 32 bytes each, and kv holds the key's
// length as a uvarint, the key and the stored bytes in one allocation. A
// pointer to an entry of a key string and a value slice took a 64-byte
// object, two more allocations and 8 bytes of node per item.
//
// A probe, an entry made to look a key up (keyEntry), has mod revision -1
// and the bare key as kv, so that a lookup copies nothing. Every stored
// entry has an etcd revision, 1 or more, as mod revision: the version is no
// marker, since a write through the cache stores what the caller's Value
// reports.
type entry struct {
	kv          string // uvarint key length, key, stored bytes; never modified
	version     int64
	modRevision int64
}

// probeRevision marks a probe (keyEntry).
const probeRevision = -1

// keyEntry returns the probe of key: an entry that compares as key.
func keyEntry(key string) entry { return entry{kv: key, modRevision: probeRevision} }

// newEntry copies key and stored bytes into an entry.
func newEntry(key, value []byte, version, modRevision int64) entry {
	// One allocation, the string's, for items up to 256 bytes: they are
	// put together on the stack first. A concatenation of the three as
	// strings would allocate each conversion of more than 32 bytes too.
	var stack [256]byte
	b := binary.AppendUvarint(stack[:0], uint64(len(key)))
	b = append(append(b, key...), value...)
	return entry{kv: string(b), version: version, modRevision: modRevision}
}

// split returns the key and the stored bytes of e.
func (e entry) split() (key, value string) {
	if e.modRevision == probeRevision {
		return e.kv, ""
	}
	n, w := uint64(0), 0
	for shift := 0; ; shift += 7 {
		b := e.kv[w]
		w++
		n |= uint64(b&0x7f) << shift
		if b < 0x80 {
			break
		}
	}
	return e.kv[w : w+int(n)], e.kv[w+int(n):]
}

func (e entry) key() string {
	k, _ := e.split()
	return k
}

func entryLess(a, b entry) bool { return a.key() < b.key() }

// rangeTombstone is a write-through DeletePrefix the watch has not passed:
// it keeps older watch puts from bringing keys of its range back.
type rangeTombstone struct {
	start, end string
	revision   int64
}

type cache[V Value] struct {
	client *clientv3.Client
	prefix string // with its trailing slash
	keyOf  func(v V) string
	w      *watcher

	// mu protects the following fields. The watch writes them only from the
	// current run: the watcher makes every sink call of a run, and its
	// ended, happen before the next run's first call, so a stopped run
	// never touches the state of a newer one.
	mu      sync.RWMutex
	started bool  // between the first read of a run and the run's end
	err     error // why the watch stopped on its own; reads fail with it
	items   *btree.BTreeG[entry]
	rev     int64 // every change up to rev has reached the cache from the watch
	// Tombstones of write-through deletes at revisions the watch has not
	// reached, so that an older put the watch still delivers is ignored.
	tombstones      map[string]int64 // key -> delete revision
	rangeTombstones []rangeTombstone
	// removed holds the keys those deletes took out of items, with the
	// delete's revision: keys the watch will still deliver a delete for.
	// A subscription's resync counts them as present (watchedLocked).
	removed map[string]int64
	resets  int64 // reads delivered by the watch (reset calls)
	// subs are the runs of the cache's subscriptions (Watch): apply hands
	// them what it applied, under mu, so that they see the cache's changes
	// in its order and only once it holds them.
	subs map[*subscriber[V]]struct{}
	// changed is closed and set to nil when rev moves, the watch stops, the
	// cache is reset or stopped; nil while nobody waits (see waitFor).
	changed chan struct{}

	// barrier shares the revision reads of concurrent Syncs.
	barrier revisionBarrier
	// progress rate-limits the progress requests of waiters.
	progress struct {
		mu   sync.Mutex // protects last
		last time.Time  // when a progress notification was last requested
	}
}

var (
	_ Cache[*StoredValue] = (*cache[*StoredValue])(nil)
	_ sink                = (*cache[*StoredValue])(nil)
	_ writeThrough        = (*cache[*StoredValue])(nil)
)

// NewCache returns a cache of the values under prefix (a trailing slash is
// added if missing); key(v) gives the etcd key of an item, which must lie
// under prefix. Call Start before use.
func NewCache[V Value](client *clientv3.Client, prefix string, key func(v V) string) Cache[V] {
	prefix = withTrailingSlash(prefix)
	return &cache[V]{client: client, prefix: prefix, keyOf: key, w: newWatcher(client, prefix, true, nil)}
}

func (c *cache[V]) Start(ctx context.Context) error {
	if err := c.w.start(ctx, c); err != nil {
		return fmt.Errorf("cache %s: start: %w", c.prefix, err)
	}
	return nil
}

// Stop leaves the emptying to the run's end (ended): emptying here, after
// close, would race a Start that began meanwhile and empty its live run.
func (c *cache[V]) Stop() { c.w.close() }

func (c *cache[V]) Error() <-chan error { return c.w.errc }

func (c *cache[V]) PropagateErrors(ctx context.Context, ch chan error) {
	propagateErrors(ctx, c.w.errc, ch)
}

func (c *cache[V]) Put(item V, options ...clientv3.OpOption) PutOp[V] {
	return &putOp[V]{client: c.client, kind: putAlways, key: c.keyOf(item), val: item, opts: options, cache: c}
}

func (c *cache[V]) Create(item V, options ...clientv3.OpOption) PutOp[V] {
	return &putOp[V]{client: c.client, kind: putCreate, key: c.keyOf(item), val: item, opts: options, cache: c}
}

func (c *cache[V]) Update(item V, options ...clientv3.OpOption) PutOp[V] {
	return &putOp[V]{client: c.client, kind: putUpdate, key: c.keyOf(item), val: item, opts: options, cache: c}
}

func (c *cache[V]) DeleteByKey(key string, options ...clientv3.OpOption) DeleteOp {
	op := &deleteOp{client: c.client, key: key, opts: options}
	if strings.HasPrefix(key, c.prefix) {
		op.cache = c
	}
	return op
}

func (c *cache[V]) DeleteValue(item V, options ...clientv3.OpOption) DeleteValueOp[V] {
	return &deleteValueOp[V]{client: c.client, key: c.keyOf(item), val: item, opts: options, cache: c}
}

func (c *cache[V]) DeletePrefix(prefix string, options ...clientv3.OpOption) DeleteOp {
	return &deleteOp{client: c.client, key: withTrailingSlash(prefix), prefix: true, opts: options, cache: c}
}

func (c *cache[V]) Get(key string) GetOp[V] { return &cacheGetOp[V]{c: c, probe: keyEntry(key)} }

func (c *cache[V]) GetPrefix(prefix string) GetMultipleOp[V] {
	return cacheGetPrefixOp[V]{c: c, prefix: prefix}
}

// readableLocked returns why the cache cannot answer reads, or nil.
func (c *cache[V]) readableLocked() error {
	switch {
	case !c.started:
		return fmt.Errorf("cache %s: %w", c.prefix, errNotStarted)
	case c.err != nil:
		return fmt.Errorf("cache %s: watch stopped: %w", c.prefix, c.err)
	}
	return nil
}

// checkWrite refuses a write-through op on a key (or prefix) outside the
// cache, or on a cache that is not started.
func (c *cache[V]) checkWrite(key string) error {
	if !strings.HasPrefix(key, c.prefix) {
		return invalidf("%s is outside the cache's prefix %s", key, c.prefix)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.started {
		return fmt.Errorf("cache %s: %w", c.prefix, errNotStarted)
	}
	return nil
}

// writePut records a successful put at revision unless the cache already
// knows a newer state of the key.
func (c *cache[V]) writePut(key string, value []byte, version, revision int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started || revision <= c.rev {
		return // the watch has delivered this write, or a later state
	}
	c.putLocked(newEntry([]byte(key), value, version, revision))
}

// writeDelete records a successful delete of key (or of the prefix key) at
// revision, with a tombstone that lasts until the watch passes revision.
func (c *cache[V]) writeDelete(key string, prefix bool, revision int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started || revision <= c.rev {
		return
	}
	if !prefix {
		c.removeLocked(key, revision)
		if c.tombstones == nil {
			c.tombstones = make(map[string]int64)
		}
		c.tombstones[key] = max(c.tombstones[key], revision)
		return
	}
	start, end := prefixRange(key)
	var gone []entry
	c.items.AscendRange(keyEntry(start), keyEntry(end), func(e entry) bool {
		if e.modRevision < revision {
			gone = append(gone, e)
		}
		return true
	})
	for _, e := range gone {
		c.items.Delete(e)
		c.markRemovedLocked(strings.Clone(e.key()), revision) // not the whole entry's bytes
	}
	c.rangeTombstones = append(c.rangeTombstones, rangeTombstone{start: start, end: end, revision: revision})
}

// putLocked stores e unless the cache holds a newer state of its key: an
// entry or tombstone at a later revision.
func (c *cache[V]) putLocked(e entry) {
	if old, ok := c.items.Get(e); ok && old.modRevision >= e.modRevision {
		return
	}
	if deletedAfter(c.tombstones, c.rangeTombstones, e.key(), e.modRevision) {
		return
	}
	c.items.ReplaceOrInsert(e)
}

// deletedAfter reports whether a write-through delete at a later revision
// than rev, among tombstones and ranges, covers key.
func deletedAfter(tombstones map[string]int64, ranges []rangeTombstone, key string, rev int64) bool {
	if tombstones[key] > rev {
		return true
	}
	for _, t := range ranges {
		if t.revision > rev && key >= t.start && key < t.end {
			return true
		}
	}
	return false
}

// deleteLocked removes key as of revision unless its entry is newer, and
// reports whether it removed it.
func (c *cache[V]) deleteLocked(key string, revision int64) bool {
	probe := keyEntry(key)
	if old, ok := c.items.Get(probe); ok && old.modRevision < revision {
		c.items.Delete(probe)
		return true
	}
	return false
}

// removeLocked removes key for a write-through delete at revision.
func (c *cache[V]) removeLocked(key string, revision int64) {
	if c.deleteLocked(key, revision) {
		c.markRemovedLocked(key, revision)
	}
}

// markRemovedLocked records that a write-through delete at revision took key
// out of items.
func (c *cache[V]) markRemovedLocked(key string, revision int64) {
	if c.removed == nil {
		c.removed = make(map[string]int64)
	}
	c.removed[key] = max(c.removed[key], revision)
}

// passedLocked moves the watch revision to rev and drops the tombstones it
// has passed: the watch has delivered their deletes, or later changes.
func (c *cache[V]) passedLocked(rev int64) {
	if rev > c.rev {
		c.signalLocked()
	}
	c.rev = max(c.rev, rev)
	for key, r := range c.tombstones {
		if r <= c.rev {
			delete(c.tombstones, key)
		}
	}
	for key, r := range c.removed {
		if r <= c.rev {
			delete(c.removed, key)
		}
	}
	kept := c.rangeTombstones[:0]
	for _, t := range c.rangeTombstones {
		if t.revision > c.rev {
			kept = append(kept, t)
		}
	}
	c.rangeTombstones = kept
}

// reset replaces the contents with a read at rev (sink). Entries written
// through at a later revision than the read stay, and tombstones still apply.
func (c *cache[V]) reset(_ context.Context, kvs []*mvccpb.KeyValue, rev int64) error {
	c.w.hooks.loaded()
	items := btree.NewG(32, entryLess)
	// kvs are in key order. Inserted last first, every node a split leaves
	// behind holds its half in a slice of that size, where ascending inserts
	// leave each in a slice of twice that: about 35 bytes of node per item
	// (the entry and its share of the node), not nearly twice that.
	for i := len(kvs) - 1; i >= 0; i-- {
		kv := kvs[i]
		items.ReplaceOrInsert(newEntry(kv.Key, kv.Value, kv.Version, kv.ModRevision))
		// The entry holds a copy: the read's item is garbage now, so the
		// load never holds the read and the tree whole at once.
		kvs[i] = nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.items
	liveCaches.Store(c, struct{}{}) // the gauges read it until ended
	c.items, c.started, c.err = items, true, nil
	if old != nil {
		old.Ascend(func(e entry) bool {
			if e.modRevision > rev {
				c.items.ReplaceOrInsert(e)
			}
			return true
		})
	}
	for key, r := range c.tombstones {
		c.removeLocked(key, r)
	}
	for _, t := range c.rangeTombstones {
		var gone []entry
		c.items.AscendRange(keyEntry(t.start), keyEntry(t.end), func(e entry) bool {
			if e.modRevision < t.revision {
				gone = append(gone, e)
			}
			return true
		})
		for _, e := range gone {
			c.items.Delete(e)
		}
	}
	c.rev = 0
	c.resets++
	c.signalLocked()
	c.passedLocked(rev)
	for s := range c.subs {
		s.resyncLater() // the difference from what each delivered
	}
	return nil
}

// apply applies the events of one watch response (sink).
func (c *cache[V]) apply(_ context.Context, events []*clientv3.Event) error {
	observeEvents(observe.SourceCache, len(events))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range events {
		if ev.Type == clientv3.EventTypeDelete {
			c.deleteLocked(string(ev.Kv.Key), ev.Kv.ModRevision)
			continue
		}
		c.putLocked(newEntry(ev.Kv.Key, ev.Kv.Value, ev.Kv.Version, ev.Kv.ModRevision))
	}
	c.passedLocked(events[len(events)-1].Kv.ModRevision)
	for s := range c.subs {
		s.push(events)
	}
	return nil
}

// progressed moves the watch revision on a progress notification (sink).
func (c *cache[V]) progressed(rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.passedLocked(rev)
}

// stopped makes every later read fail with why the watch stopped (sink).
func (c *cache[V]) stopped(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	c.signalLocked()
	c.endSubscriptionsLocked(fmt.Errorf("cache %s: watch stopped: %w", c.prefix, err))
}

// ended empties the cache once its run has ended (sink): the next Start
// finds it as before the first.
func (c *cache[V]) ended() {
	c.mu.Lock()
	defer c.mu.Unlock()
	liveCaches.Delete(c)
	c.started, c.err, c.items, c.rev = false, nil, nil, 0
	c.tombstones, c.rangeTombstones, c.removed = nil, nil, nil
	c.signalLocked()
	c.endSubscriptionsLocked(fmt.Errorf("cache %s: %w", c.prefix, errCacheStopped))
}

// decode returns a fresh V for e.
func decodeEntry[V Value](e entry) (V, error) {
	// json decodes bytes, not strings: a pooled copy of the stored bytes,
	// not a conversion, which would allocate on every read.
	buf := bufferPool.Get().(*bytes.Buffer)
	defer putBuffer(buf)
	key, value := e.split()
	buf.WriteString(value)
	v, err := decodeValue[V](key, buf.Bytes())
	if err != nil {
		return v, err
	}
	setVersionAndRevision(v, e.version, e.modRevision)
	return v, nil
}

// cacheGetOp implements GetOp from memory.
type cacheGetOp[V Value] struct {
	c *cache[V]
	// probe holds the key and looks it up in the tree: allocated with the
	// op, not on every Exec.
	probe entry
}

func (g *cacheGetOp[V]) Exec(context.Context) (_ V, err error) {
	defer startOp(observe.OpGet).done(&err)
	var zero V
	g.c.mu.RLock()
	if err := g.c.readableLocked(); err != nil {
		g.c.mu.RUnlock()
		return zero, fmt.Errorf("get %s: %w", g.probe.key(), err)
	}
	e, ok := g.c.items.Get(g.probe)
	g.c.mu.RUnlock()
	if !ok {
		return zero, fmt.Errorf("get %s: %w", g.probe.key(), ErrNotFound)
	}
	return decodeEntry[V](e)
}

// cacheGetPrefixOp implements GetMultipleOp from memory.
type cacheGetPrefixOp[V Value] struct {
	c      *cache[V]
	prefix string
}

func (g cacheGetPrefixOp[V]) Exec(context.Context) (_ []V, err error) {
	defer startOp(observe.OpGetPrefix).done(&err)
	prefix := withTrailingSlash(g.prefix)
	if prefix == "" {
		prefix = g.c.prefix
	}
	if !strings.HasPrefix(prefix, g.c.prefix) {
		return nil, invalidf("get prefix %s: outside the cache's prefix %s", prefix, g.c.prefix)
	}
	var found []entry
	g.c.mu.RLock()
	if err := g.c.readableLocked(); err != nil {
		g.c.mu.RUnlock()
		return nil, fmt.Errorf("get prefix %s: %w", prefix, err)
	}
	g.c.ascendLocked(prefix, func(e entry) bool {
		found = append(found, e)
		return true
	})
	g.c.mu.RUnlock()
	if len(found) == 0 {
		return nil, nil
	}
	out := make([]V, len(found))
	for i, e := range found {
		v, err := decodeEntry[V](e)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// ascendLocked calls fn for the cached entries under prefix, in key order,
// until it returns false.
func (c *cache[V]) ascendLocked(prefix string, fn func(e entry) bool) {
	start, end := prefixRange(prefix)
	if end == "\x00" {
		// prefixRange's end for the empty prefix (a cache of the whole
		// keyspace) means "to the end", as in etcd; as a btree bound it
		// would select nothing.
		c.items.AscendGreaterOrEqual(keyEntry(start), fn)
		return
	}
	c.items.AscendRange(keyEntry(start), keyEntry(end), fn)
}
