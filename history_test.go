//go:build storage_testhooks

package storage_test

// Recorders of histories, for the checkers of internal/watchcheck: the
// ground truth, what each watch delivered, the writes and their outcomes,
// cache reads, and the dump of a failed run. The chaos test (chaos_test.go)
// and the cache subscription tests use them. They only record;
// chaos_judge_test.go and the tests judge.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/watchcheck"
)

// taggedValue is the value every chaos write stores. Tag is unique per write,
// so an event names the write it came from. RevisionedValue makes Update and
// DeleteValue compare mod revisions and lets cache reads report them.
type taggedValue struct {
	storage.RevisionedValue
	Key string `json:"key"`
	Tag string `json:"tag"`
}

// chaosClock orders cache reads and writes in time (watchcheck.CacheRead).
var chaosClock atomic.Int64

// truthRecorder is the ground truth: a raw clientv3 watch of the run's
// prefix on a client that bypasses the bridges. It resumes by itself after
// any failure from the last event it received; a compaction past it would be
// a broken run (the compactor never compacts past lastEventRev), so it is
// recorded as an error.
type truthRecorder struct {
	client *clientv3.Client
	prefix string
	cancel context.CancelFunc
	donec  chan struct{} // closed when run exits

	mu        sync.Mutex // protects the following fields
	truth     []watchcheck.Truth
	lastEvent int64 // revision of the last event received
	reached   int64 // every change up to reached was received (events and progress notifications)
	err       error
	changed   chan struct{} // closed and replaced on every change of reached
}

func startTruthRecorder(client *clientv3.Client, prefix string, from int64) *truthRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &truthRecorder{client: client, prefix: prefix, cancel: cancel, donec: make(chan struct{}),
		lastEvent: from, reached: from, changed: make(chan struct{})}
	go func() {
		defer close(r.donec)
		r.run(ctx)
	}()
	return r
}

func (r *truthRecorder) stop() {
	r.cancel()
	<-r.donec
}

func (r *truthRecorder) run(ctx context.Context) {
	for ctx.Err() == nil {
		r.mu.Lock()
		from := r.lastEvent + 1
		r.mu.Unlock()
		// Each attempt gets its own context: clientv3 shares a gRPC stream
		// between watches of one context, and a fresh one may land on a
		// healthy member. RequireLeader ends a watch on a cut-off member.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.client.Watch(wctx, r.prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
			clientv3.WithProgressNotify(), clientv3.WithPrevKV())
		for resp := range wch {
			if resp.CompactRevision != 0 {
				r.fail(fmt.Errorf("ground truth compacted at %d (resuming from %d)", resp.CompactRevision, from))
				cancel()
				return
			}
			if resp.Err() != nil {
				break
			}
			r.add(resp)
		}
		cancel()
		select { // pace the re-watch; this synchronises nothing
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *truthRecorder) add(resp clientv3.WatchResponse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range resp.Events {
		t := watchcheck.Truth{Revision: ev.Kv.ModRevision, Key: string(ev.Kv.Key), Type: storage.EventTypeDelete}
		if ev.Type == clientv3.EventTypePut {
			var v taggedValue
			if err := json.Unmarshal(ev.Kv.Value, &v); err != nil {
				r.err = fmt.Errorf("ground truth: undecodable value at %s@%d: %w", t.Key, t.Revision, err)
			}
			t.Type, t.Value, t.Version, t.CreateRevision = storage.EventTypePut, v.Tag, ev.Kv.Version, ev.Kv.CreateRevision
		}
		r.truth = append(r.truth, t)
		r.lastEvent = t.Revision
	}
	rev := r.lastEvent
	if resp.IsProgressNotify() {
		rev = max(rev, resp.Header.GetRevision())
	}
	if rev > r.reached {
		r.reached = rev
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

func (r *truthRecorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

// compactable is the highest revision the compactor may compact to: the
// recorder resumes from its last event, so never past it.
func (r *truthRecorder) compactable() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastEvent
}

// waitReached waits until every change up to rev was received.
func (r *truthRecorder) waitReached(ctx context.Context, rev int64) error {
	for {
		r.mu.Lock()
		reached, changed, err := r.reached, r.changed, r.err
		r.mu.Unlock()
		switch {
		case err != nil:
			return err
		case reached >= rev:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ground truth reached %d, want %d: %w", reached, rev, ctx.Err())
		case <-changed:
		}
	}
}

// snapshot returns a copy of the truth so far and any recorder error.
func (r *truthRecorder) snapshot() ([]watchcheck.Truth, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]watchcheck.Truth(nil), r.truth...), r.err
}

// historyRec records what one WatchOp run delivered, with the internal
// restarts reported by the library's restart hook. The hook and the handler
// run on the goroutine that delivers, one after the other.
type historyRec struct {
	name   string
	prefix string
	member int           // the member its client is pinned to
	slow   time.Duration // handler latency (the slow watcher)

	mu       sync.Mutex // protects the following fields
	h        watchcheck.History
	started  bool
	reading  bool  // the events of the latest read are being delivered
	readRev  int64 // revision of the latest read
	lastRev  int64 // revision of the last delivered event, else of the initial read
	sinceRd  int   // events delivered since the latest read
	dropped  int   // resumes not recordable (see restart)
	restarts int
	// What a canary run needs to prove that its broken path was taken:
	// the revision each watch started after (every read's revision, every
	// resume's point), and the resumes that started past what the handler
	// had been given.
	starts []int64
	ahead  []resumeAhead
}

// resumeAhead is a resume that started after revision From while the handler
// had been given everything up to Reached only (the last delivered event, or
// the latest read): the revisions in between were never delivered.
type resumeAhead struct {
	Reached, From int64
}

func (r *historyRec) restart(lastRev, readRev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if readRev != 0 {
		r.starts = append(r.starts, readRev)
	} else {
		r.starts = append(r.starts, lastRev)
		if reached := max(r.lastRev, r.readRev); lastRev > reached {
			r.ahead = append(r.ahead, resumeAhead{Reached: reached, From: lastRev})
		}
	}
	if !r.started {
		r.started, r.h.ReadRev, r.lastRev = true, readRev, readRev
		r.reading, r.readRev, r.sinceRd = true, readRev, 0
		return
	}
	r.restarts++
	if readRev == 0 && r.readRev > r.lastRev && r.sinceRd == 0 {
		// A re-read that delivered nothing moved the watch past the last
		// event; watchcheck.Restart has no way to say so (LastRev must be the
		// event before), and rules 4 and 8 still cover this stretch.
		r.dropped++
		return
	}
	r.h.Restarts = append(r.h.Restarts, watchcheck.Restart{At: len(r.h.Events), LastRev: r.lastRev, ReadRev: readRev})
	if readRev != 0 {
		r.reading, r.readRev, r.sinceRd = true, readRev, 0
	}
}

func (r *historyRec) handle(e *storage.Event[*taggedValue]) error {
	d := watchcheck.Delivered{Revision: e.Revision, Key: e.Key, Type: e.Type, IsCreate: e.IsCreate, IsModify: e.IsModify}
	if e.Value != nil {
		d.Value, d.Version = e.Value.Tag, e.Value.Version()
	}
	r.mu.Lock()
	d.FromRead = r.reading && e.Revision == r.readRev
	r.reading = d.FromRead
	r.h.Events = append(r.h.Events, d)
	r.lastRev = e.Revision
	r.sinceRd++
	r.mu.Unlock()
	if r.slow > 0 {
		time.Sleep(r.slow) // the slow handler's work, not synchronisation
	}
	return nil
}

// delivered returns the revision of the last delivered event (or the
// initial read's).
func (r *historyRec) delivered() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastRev
}

// count returns the number of events delivered so far.
func (r *historyRec) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.h.Events)
}

// evidence returns the starts and the resumes ahead of delivery recorded so
// far (see the fields).
func (r *historyRec) evidence() ([]int64, []resumeAhead) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.starts), slices.Clone(r.ahead)
}

func (r *historyRec) history() watchcheck.History {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.h
	h.Prefix = r.prefix
	h.Events = append([]watchcheck.Delivered(nil), h.Events...)
	h.Restarts = append([]watchcheck.Restart(nil), h.Restarts...)
	return h
}

// The outcomes of a write.
const (
	chaosOK      = "ok"      // acknowledged
	chaosFailed  = "failed"  // definitely not applied (a compare failed)
	chaosUnknown = "unknown" // timeout, unavailable: applied or not
)

// chaosWrite is one write of the workload and its outcome. A txn is one
// write with several keys.
type chaosWrite struct {
	ID        int      `json:"id"`
	Writer    string   `json:"writer"`
	Kind      string   `json:"kind"`
	PutKeys   []string `json:"put_keys,omitempty"`
	Tags      []string `json:"tags,omitempty"` // one per put key
	DelKeys   []string `json:"del_keys,omitempty"`
	DelValue  bool     `json:"del_value,omitempty"` // DelKeys existed (DeleteValue)
	DelPrefix string   `json:"del_prefix,omitempty"`
	TTL       bool     `json:"ttl,omitempty"`
	Outcome   string   `json:"outcome"`
	Revision  int64    `json:"revision,omitempty"`
	Err       string   `json:"err,omitempty"`
	StartMs   int64    `json:"start_ms"`
	EndMs     int64    `json:"end_ms"`
}

// chaosFault is one line of a run's fault timeline.
type chaosFault struct {
	AtMs   int64  `json:"at_ms"`
	Fault  string `json:"fault"`
	Member int    `json:"member"`
	Phase  string `json:"phase"`
}

// chaosDump writes a failed run's logs as JSON lines into a new folder under
// os.TempDir (not the test's temp dir, which is removed; BeforeTest changed
// the working directory, so the path is absolute) and returns the folder.
func chaosDump(seed uint64, files map[string][]any) (string, error) {
	dir, err := os.MkdirTemp(os.TempDir(), fmt.Sprintf("chaos-%d-", seed))
	if err != nil {
		return "", err
	}
	for name, lines := range files {
		f, err := os.Create(filepath.Join(dir, name+".jsonl"))
		if err != nil {
			return dir, err
		}
		enc := json.NewEncoder(f)
		for _, l := range lines {
			if err := enc.Encode(l); err != nil {
				_ = f.Close()
				return dir, err
			}
		}
		if err := f.Close(); err != nil {
			return dir, err
		}
	}
	return dir, nil
}

// chaosLines converts a slice to the []any chaosDump takes.
func chaosLines[T any](s []T) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
