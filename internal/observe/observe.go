// Package observe is the hook between package storage and its metrics
// adapters (storageprom, or one for OpenTelemetry): storage reports what its
// ops, watches and caches do to every [Observer] added here, and an adapter
// reads the current gauges through [CurrentGauges] when it collects.
//
// With no observer added, a report costs an atomic load and a nil check:
// storage reads no clock and builds no argument for nobody.
package observe

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Observer receives the reports of package storage. Its methods are called
// from any goroutine, concurrently, on the paths they report (an op's
// caller, a watch's goroutine), so they must be quick and must not block.
type Observer interface {
	// Operation reports an op's end: its name, outcome and duration.
	Operation(op Op, outcome Outcome, elapsed time.Duration)
	// WatchEvents reports n events delivered to a watch's handler or
	// applied to a cache.
	WatchEvents(source Source, n int)
	// WatchRestart reports that a watch restarts, and why.
	WatchRestart(reason Restart)
	// WatchStopped reports that a watch run ended, and why.
	WatchStopped(reason Stop)
	// HandlerQueue reports how long a watch response waited between its
	// receipt and its delivery to the handler (or to a cache).
	HandlerQueue(wait time.Duration)
	// DecodeError reports stored bytes that could not be decoded.
	DecodeError()
	// LeaseGranted reports a lease granted for TTL puts.
	LeaseGranted()
}

// Gauges gives the current state that gauges show. An adapter calls it when
// it collects; package storage provides it (see [SetGauges]).
type Gauges interface {
	// Caches returns one entry per prefix of the started caches.
	Caches() []CacheStat
	// Leases returns the number of current shared leases by TTL in seconds.
	Leases() map[int64]int
}

// CacheStat is the state of the started caches of one prefix: their items
// added up, and the lowest revision among them (the one furthest behind).
type CacheStat struct {
	Prefix   string
	Items    int
	Revision int64
}

var (
	mu        sync.Mutex                 // serialises Add and its removals
	observers atomic.Pointer[[]Observer] // nil when none: the hot path's one check
	gauges    atomic.Pointer[Gauges]
)

// Add adds o to the observers; remove takes it out again (idempotent). The
// same observer added twice reports twice.
func Add(o Observer) (remove func()) {
	mu.Lock()
	defer mu.Unlock()
	entry := &o // identifies this addition, even of an observer added twice
	var list []Observer
	if p := observers.Load(); p != nil {
		list = slices.Clone(*p)
	}
	list = append(list, o)
	observers.Store(&list)
	added = append(added, entry)
	var once sync.Once
	return func() { once.Do(func() { removeEntry(entry) }) }
}

// added are the additions in the order of the observers list.
var added []*Observer // guarded by mu

func removeEntry(entry *Observer) {
	mu.Lock()
	defer mu.Unlock()
	i := slices.Index(added, entry)
	if i < 0 {
		return
	}
	added = slices.Delete(added, i, i+1)
	if len(added) == 0 {
		observers.Store(nil)
		return
	}
	list := make([]Observer, len(added))
	for j, e := range added {
		list[j] = *e
	}
	observers.Store(&list)
}

// Observers returns the current observers, nil when there are none. The
// slice must not be modified.
func Observers() []Observer {
	if p := observers.Load(); p != nil {
		return *p
	}
	return nil
}

// Active reports whether any observer listens.
func Active() bool { return observers.Load() != nil }

// SetGauges sets the source of the gauges; package storage calls it once,
// when it is initialised.
func SetGauges(g Gauges) { gauges.Store(&g) }

// CurrentGauges returns the source of the gauges, nil when package storage
// is not part of the program.
func CurrentGauges() Gauges {
	if p := gauges.Load(); p != nil {
		return *p
	}
	return nil
}
