// Package watchcheck judges recorded watch and cache histories against the
// guarantees of github.com/etcdkit/storage, as etcd's robustness tests do
// in tests/robustness/validate. Its checkers are plain functions over
// recordings and need no etcd. The chaos test records what a handler
// received (a [History]), what etcd really did under the prefix (a ground
// truth of [Truth] from a raw clientv3 watch on an undisturbed client), and
// what cache reads returned; these functions then judge the recordings.
// Each checker returns nil or an error wrapping its own sentinel that
// describes the first violation with indexes, keys and revisions.
//
// Conventions shared by every checker:
//   - The ground truth starts from an empty prefix (a fresh prefix per run),
//     so the state at any revision is the fold of its events up to there.
//   - A read (the initial read or a re-read after compaction) is a run of
//     FromRead events starting at its read point and sharing the read's
//     revision; a re-read's revision is strictly above everything delivered
//     before it (etcd only reports compaction when it compacted past the
//     resume revision + 1), so read items never repeat a (revision, key).
//   - The chaos workload writes only decodable values: an event of type
//     error is itself a violation for the checkers that compare values.
package watchcheck

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/etcdkit/storage"
)

// Delivered is one event as a WatchOp handler received it.
type Delivered struct {
	Revision int64
	Key      string
	Type     storage.EventType
	Value    string // "" for a delete
	Version  int64  // the value's version; 0 for a delete
	IsCreate bool
	IsModify bool
	FromRead bool // delivered by the initial read or by a re-read after compaction
}

// Restart marks an internal restart of the watch (a resume, or a re-read
// after compaction).
type Restart struct {
	At      int   // index in Events of the first event delivered after the restart (len(Events) if none)
	LastRev int64 // last revision delivered before the restart: the resume point
	ReadRev int64 // non-zero when compaction forced a re-read at this revision; its items are the FromRead events from At on
}

// History is everything one watch run delivered.
type History struct {
	Prefix   string // the watched prefix, as given to NewWatchPrefixOp
	ReadRev  int64  // the initial read's revision; 0 means the revision of a leading FromRead event
	Events   []Delivered
	Restarts []Restart // in delivery order
}

// Truth is one change recorded by a raw clientv3 watch on the whole
// keyspace (or at least on the watched prefix and its neighbours).
type Truth struct {
	Revision       int64
	Key            string
	Type           storage.EventType // put or delete
	Value          string
	Version        int64 // 0 for a delete
	CreateRevision int64 // 0 for a delete
}

// CacheRead is one cache read of a key. Start and End come from one
// monotonic clock (an atomic counter read before the call and after it
// returned), so two reads are ordered in time only when one ended before the
// other started.
type CacheRead struct {
	Key         string
	ModRevision int64 // 0: not found
	Start, End  int64
}

// KV is a key's state as a read sees it.
type KV struct {
	Value   string
	Version int64
}

// The sentinels, one per checker, so a table test can tell which rule fired.
var (
	ErrOrdered    = errors.New("ordered")
	ErrUnique     = errors.New("unique")
	ErrAtomic     = errors.New("atomic")
	ErrReliable   = errors.New("reliable")
	ErrResumable  = errors.New("resumable")
	ErrFilter     = errors.New("filter")
	ErrFlags      = errors.New("is-create/is-modify")
	ErrReplay     = errors.New("replay")
	ErrBackInTime = errors.New("cache back in time")
)

// Watch runs checkers 1 to 7 and joins their errors.
func Watch(h History, truth []Truth) error {
	return errors.Join(
		Ordered(h),
		Unique(h),
		Atomic(h, truth),
		Reliable(h, truth),
		Resumable(h, truth),
		Filter(h),
		Flags(h, truth),
	)
}

func fmtEvent(i int, e Delivered) string {
	s := fmt.Sprintf("event %d (%s %s@%d", i, e.Type, e.Key, e.Revision)
	if e.FromRead {
		s += " read"
	}
	return s + ")"
}

// FormatTruth names a ground-truth change: "put /a/x@7".
func FormatTruth(t Truth) string {
	return fmt.Sprintf("%s %s@%d", t.Type, t.Key, t.Revision)
}

// withSlash adds the trailing slash NewWatchPrefixOp adds, so "/a" never
// matches "/ab".
func withSlash(p string) string {
	if p == "" || strings.HasSuffix(p, "/") {
		return p
	}
	return p + "/"
}

// readSpan is one read of a history: Events[From:To] are its items.
type readSpan struct {
	Rev      int64
	From, To int
}

// readSpans finds the reads of h and, for each event, the index of the read
// owning it (-1 for a watch event). Reads may be empty (From == To).
func readSpans(h History) ([]readSpan, []int) {
	type point struct {
		at  int
		rev int64
	}
	var points []point
	initial := h.ReadRev
	if initial == 0 && len(h.Events) > 0 && h.Events[0].FromRead {
		initial = h.Events[0].Revision
	}
	if initial != 0 {
		points = append(points, point{0, initial})
	}
	for _, r := range h.Restarts {
		if r.ReadRev != 0 {
			points = append(points, point{r.At, r.ReadRev})
		}
	}
	owner := make([]int, len(h.Events))
	for i := range owner {
		owner[i] = -1
	}
	starts := map[int]bool{}
	for _, p := range points {
		starts[p.at] = true
	}
	reads := make([]readSpan, 0, len(points))
	for _, p := range points {
		to := p.at
		for to < len(h.Events) && h.Events[to].FromRead && (to == p.at || !starts[to]) {
			owner[to] = len(reads)
			to++
		}
		reads = append(reads, readSpan{Rev: p.rev, From: p.at, To: to})
	}
	return reads, owner
}

// Ordered checks rule 1: revisions never decrease; the items of a
// read carry the read's revision; a read's revision is above everything
// delivered before it and below the watch events after it (the watch starts
// at the read revision + 1); no FromRead event stands outside a read.
func Ordered(h History) error {
	reads, owner := readSpans(h)
	for _, r := range reads {
		if r.From > 0 && r.Rev <= h.Events[r.From-1].Revision {
			return fmt.Errorf("%w: read at revision %d starting at index %d is not after %s",
				ErrOrdered, r.Rev, r.From, fmtEvent(r.From-1, h.Events[r.From-1]))
		}
		if r.To < len(h.Events) && owner[r.To] < 0 && h.Events[r.To].Revision <= r.Rev {
			return fmt.Errorf("%w: %s follows the read at revision %d: the watch must start after it",
				ErrOrdered, fmtEvent(r.To, h.Events[r.To]), r.Rev)
		}
	}
	for i, e := range h.Events {
		if e.FromRead && owner[i] < 0 {
			return fmt.Errorf("%w: %s is a read item outside any read", ErrOrdered, fmtEvent(i, e))
		}
		if owner[i] >= 0 && e.Revision != reads[owner[i]].Rev {
			return fmt.Errorf("%w: read item %s does not carry its read's revision %d",
				ErrOrdered, fmtEvent(i, e), reads[owner[i]].Rev)
		}
		if i > 0 && e.Revision < h.Events[i-1].Revision {
			return fmt.Errorf("%w: %s after %s: revision went back",
				ErrOrdered, fmtEvent(i, e), fmtEvent(i-1, h.Events[i-1]))
		}
	}
	return nil
}

// Unique checks rule 2: no (revision, key) is delivered twice. The
// items of one read share a revision but not a key, and a re-read's revision
// is above every earlier one, so reads need no exception.
func Unique(h History) error {
	type revKey struct {
		rev int64
		key string
	}
	seen := map[revKey]int{}
	for i, e := range h.Events {
		k := revKey{e.Revision, e.Key}
		if j, ok := seen[k]; ok {
			return fmt.Errorf("%w: %s repeats %s", ErrUnique, fmtEvent(i, e), fmtEvent(j, h.Events[j]))
		}
		seen[k] = i
	}
	return nil
}

// InPrefix returns the ground-truth changes under prefix, in order.
func InPrefix(truth []Truth, prefix string) []Truth {
	p := withSlash(prefix)
	var in []Truth
	for _, t := range truth {
		if strings.HasPrefix(t.Key, p) {
			in = append(in, t)
		}
	}
	return in
}

// Atomic checks rule 3: the events of one revision arrive together,
// before any of a later revision, and every delivered watch revision carries
// exactly the ground truth's keys of that revision under the prefix (a txn is
// never split across a restart or a gap).
func Atomic(h History, truth []Truth) error {
	ended := map[int64]int{} // revision -> index of its last event, once a later one began
	for i := 1; i < len(h.Events); i++ {
		prev, e := h.Events[i-1], h.Events[i]
		if e.Revision != prev.Revision {
			ended[prev.Revision] = i - 1
		}
		if j, ok := ended[e.Revision]; ok {
			return fmt.Errorf("%w: %s arrives after revision %d ended at %s",
				ErrAtomic, fmtEvent(i, e), e.Revision, fmtEvent(j, h.Events[j]))
		}
	}
	want := map[int64]map[string]bool{}
	for _, t := range InPrefix(truth, h.Prefix) {
		if want[t.Revision] == nil {
			want[t.Revision] = map[string]bool{}
		}
		want[t.Revision][t.Key] = true
	}
	got := map[int64]map[string]bool{}
	var revs []int64
	for _, e := range h.Events {
		if e.FromRead {
			continue
		}
		if got[e.Revision] == nil {
			got[e.Revision] = map[string]bool{}
			revs = append(revs, e.Revision)
		}
		got[e.Revision][e.Key] = true
	}
	for _, rev := range revs {
		for _, k := range slices.Sorted(maps.Keys(want[rev])) {
			if !got[rev][k] {
				return fmt.Errorf("%w: revision %d delivered without %s, written in the same revision",
					ErrAtomic, rev, k)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(got[rev])) {
			if !want[rev][k] {
				return fmt.Errorf("%w: revision %d delivered %s, which the ground truth did not write then",
					ErrAtomic, rev, k)
			}
		}
	}
	return nil
}

// StateAt folds the ground-truth changes up to rev.
func StateAt(in []Truth, rev int64) map[string]KV {
	state := map[string]KV{}
	for _, t := range in {
		if t.Revision > rev {
			break
		}
		if t.Type == storage.EventTypeDelete {
			delete(state, t.Key)
			continue
		}
		state[t.Key] = KV{Value: t.Value, Version: t.Version}
	}
	return state
}

// StateDiff returns the first key, in sorted order, on which got and
// want differ.
func StateDiff(got, want map[string]KV) (string, bool) {
	keys := append(slices.Collect(maps.Keys(got)), slices.Collect(maps.Keys(want))...)
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		g, gok := got[k]
		w, wok := want[k]
		if gok != wok || g != w {
			return k, true
		}
	}
	return "", false
}

// FormatKV describes key k of a state: its value and version, or that it
// is absent.
func FormatKV(m map[string]KV, k string) string {
	kv, ok := m[k]
	if !ok {
		return "absent"
	}
	return fmt.Sprintf("%q version %d", kv.Value, kv.Version)
}

// apply applies a delivered put or delete to state.
func apply(state map[string]KV, e Delivered) {
	if e.Type == storage.EventTypeDelete {
		delete(state, e.Key)
		return
	}
	state[e.Key] = KV{Value: e.Value, Version: e.Version}
}

// Reliable checks rule 4: from the initial read to the last
// delivered revision, the watch events equal the ground truth under the
// prefix (revision, key, type, value, version), none missing, none extra.
// Each read (the initial one, and a re-read bridging a compaction) is checked
// by state instead: applying its puts and deletes to the state built from
// everything delivered before must give the ground-truth state at the read's
// revision; the ground-truth changes up to that revision are then skipped,
// since intermediate versions are gone. Within one revision the order of keys
// is free.
func Reliable(h History, truth []Truth) error {
	reads, owner := readSpans(h)
	if len(reads) == 0 || reads[0].From != 0 {
		return fmt.Errorf("%w: history has no initial read revision", ErrReliable)
	}
	in := InPrefix(truth, h.Prefix)
	state := map[string]KV{}
	cursor, next := 0, 0 // next ground-truth change; next read
	for i := 0; i <= len(h.Events); i++ {
		for next < len(reads) && reads[next].From == i {
			r := reads[next]
			next++
			for _, e := range h.Events[r.From:r.To] {
				apply(state, e)
			}
			want := StateAt(in, r.Rev)
			if k, ok := StateDiff(state, want); ok {
				return fmt.Errorf("%w: after the read at revision %d (index %d), %s is %s, ground truth %s",
					ErrReliable, r.Rev, r.From, k, FormatKV(state, k), FormatKV(want, k))
			}
			for cursor < len(in) && in[cursor].Revision <= r.Rev {
				cursor++
			}
		}
		if i == len(h.Events) || owner[i] >= 0 {
			continue
		}
		e := h.Events[i]
		if e.Type == storage.EventTypeError {
			return fmt.Errorf("%w: %s: the workload writes only decodable values", ErrReliable, fmtEvent(i, e))
		}
		if cursor == len(in) {
			return fmt.Errorf("%w: %s is not in the ground truth", ErrReliable, fmtEvent(i, e))
		}
		// Within a revision, take the ground-truth change of the same key.
		for j := cursor; j < len(in) && in[j].Revision == in[cursor].Revision; j++ {
			if in[j].Key == e.Key && in[cursor].Revision == e.Revision {
				in[cursor], in[j] = in[j], in[cursor]
				break
			}
		}
		t := in[cursor]
		switch {
		case t.Revision < e.Revision:
			return fmt.Errorf("%w: ground truth %s is missing before %s",
				ErrReliable, FormatTruth(t), fmtEvent(i, e))
		case t.Revision > e.Revision || t.Key != e.Key:
			return fmt.Errorf("%w: %s is not in the ground truth (next there: %s)",
				ErrReliable, fmtEvent(i, e), FormatTruth(t))
		case t.Type != e.Type || t.Value != e.Value || t.Version != e.Version:
			return fmt.Errorf("%w: %s has %q version %d, ground truth %s %q version %d",
				ErrReliable, fmtEvent(i, e), e.Value, e.Version, t.Type, t.Value, t.Version)
		}
		apply(state, e)
		cursor++
	}
	if n := len(h.Events); n > 0 && cursor < len(in) && in[cursor].Revision <= h.Events[n-1].Revision {
		return fmt.Errorf("%w: ground truth %s is missing at the end (last delivered revision %d)",
			ErrReliable, FormatTruth(in[cursor]), h.Events[n-1].Revision)
	}
	return nil
}

// bridgedAt reports whether a re-read happened at event index at: a
// resume that delivered nothing before the watch had to re-read is judged
// by the re-read (check 4), not by its first event.
func bridgedAt(restarts []Restart, at int) bool {
	return slices.ContainsFunc(restarts, func(r Restart) bool { return r.At == at && r.ReadRev != 0 })
}

// Resumable checks rule 5: after each restart without a re-read,
// the first event delivered is the first ground-truth change under the prefix
// after the restart's last delivered revision (a change of that revision; the
// rest of it is rule 3's). The restart's LastRev must be the revision of the
// event before it. A restart bridged by a re-read is rule 4's.
func Resumable(h History, truth []Truth) error {
	in := InPrefix(truth, h.Prefix)
	for n, r := range h.Restarts {
		if r.At > 0 && r.At <= len(h.Events) && h.Events[r.At-1].Revision != r.LastRev {
			return fmt.Errorf("%w: restart %d records last delivered revision %d, but %s precedes it",
				ErrResumable, n, r.LastRev, fmtEvent(r.At-1, h.Events[r.At-1]))
		}
		if r.ReadRev != 0 || r.At >= len(h.Events) || bridgedAt(h.Restarts, r.At) {
			continue
		}
		e := h.Events[r.At]
		j := slices.IndexFunc(in, func(t Truth) bool { return t.Revision > r.LastRev })
		if j < 0 {
			return fmt.Errorf("%w: restart %d after revision %d delivered %s, but the ground truth has no later change",
				ErrResumable, n, r.LastRev, fmtEvent(r.At, e))
		}
		first := in[j]
		sameRev := false
		for _, t := range in[j:] {
			if t.Revision != first.Revision {
				break
			}
			sameRev = sameRev || t.Key == e.Key
		}
		if e.Revision != first.Revision || !sameRev {
			return fmt.Errorf("%w: restart %d resumed after revision %d with %s, want the first change after it, %s",
				ErrResumable, n, r.LastRev, fmtEvent(r.At, e), FormatTruth(first))
		}
	}
	return nil
}

// Filter checks rule 6: every key is under the prefix, with the
// trailing slash the op adds ("/a" never yields "/ab").
func Filter(h History) error {
	p := withSlash(h.Prefix)
	for i, e := range h.Events {
		if !strings.HasPrefix(e.Key, p) {
			return fmt.Errorf("%w: %s is outside prefix %q", ErrFilter, fmtEvent(i, e), p)
		}
	}
	return nil
}

// Flags checks rule 7: IsCreate and IsModify follow the ground
// truth. A watch put creates when it is the first version of the key's
// incarnation (its create revision is its revision) and modifies otherwise; a
// read item creates when the key's version at the read revision is 1 and
// modifies when it is above; a delete does neither.
func Flags(h History, truth []Truth) error {
	in := InPrefix(truth, h.Prefix)
	type revKey struct {
		rev int64
		key string
	}
	byRevKey := map[revKey]Truth{}
	for _, t := range in {
		byRevKey[revKey{t.Revision, t.Key}] = t
	}
	states := map[int64]map[string]KV{}
	for i, e := range h.Events {
		var create, modify bool
		switch {
		case e.Type == storage.EventTypeError:
			continue
		case e.Type == storage.EventTypeDelete:
		case e.FromRead:
			if states[e.Revision] == nil {
				states[e.Revision] = StateAt(in, e.Revision)
			}
			kv, ok := states[e.Revision][e.Key]
			if !ok {
				return fmt.Errorf("%w: read item %s: the key does not exist at that revision", ErrFlags, fmtEvent(i, e))
			}
			create, modify = kv.Version == 1, kv.Version > 1
		default:
			t, ok := byRevKey[revKey{e.Revision, e.Key}]
			if !ok {
				return fmt.Errorf("%w: %s is not in the ground truth", ErrFlags, fmtEvent(i, e))
			}
			create = t.CreateRevision == t.Revision
			modify = !create
		}
		if e.IsCreate != create || e.IsModify != modify {
			return fmt.Errorf("%w: %s has IsCreate %t IsModify %t, want %t %t",
				ErrFlags, fmtEvent(i, e), e.IsCreate, e.IsModify, create, modify)
		}
	}
	return nil
}

// Replay checks rule 8: the initial read and every event after it,
// applied in order, give final exactly (key, value, version). final must be a
// fresh read at the last delivered revision.
func Replay(h History, final map[string]KV) error {
	state := map[string]KV{}
	for i, e := range h.Events {
		if e.Type == storage.EventTypeError {
			return fmt.Errorf("%w: %s cannot be replayed", ErrReplay, fmtEvent(i, e))
		}
		apply(state, e)
	}
	if k, ok := StateDiff(state, final); ok {
		return fmt.Errorf("%w: replay of %d events gives %s = %s, fresh read %s",
			ErrReplay, len(h.Events), k, FormatKV(state, k), FormatKV(final, k))
	}
	return nil
}

// CacheMonotonic checks rule 9: a read of a key never returns an
// older mod revision than a read of the same key that ended before it
// started. Not-found reads (ModRevision 0) are skipped: a delete may explain
// them, and a key that comes back must come back newer, which the rule still
// checks against the reads before the delete.
func CacheMonotonic(reads []CacheRead) error {
	byKey := map[string][]int{}
	for i, r := range reads {
		if r.ModRevision != 0 {
			byKey[r.Key] = append(byKey[r.Key], i)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		idx := byKey[key]
		byEnd := slices.SortedFunc(slices.Values(idx), func(a, b int) int { return cmp.Compare(reads[a].End, reads[b].End) })
		byStart := slices.SortedFunc(slices.Values(idx), func(a, b int) int { return cmp.Compare(reads[a].Start, reads[b].Start) })
		best, e := -1, 0 // the newest read among those ended so far
		for _, i := range byStart {
			for ; e < len(byEnd) && reads[byEnd[e]].End < reads[i].Start; e++ {
				if best < 0 || reads[byEnd[e]].ModRevision > reads[best].ModRevision {
					best = byEnd[e]
				}
			}
			if best >= 0 && reads[i].ModRevision < reads[best].ModRevision {
				return fmt.Errorf("%w: read %d of %s returned mod revision %d after read %d returned %d",
					ErrBackInTime, i, key, reads[i].ModRevision, best, reads[best].ModRevision)
			}
		}
	}
	return nil
}

// DigestDiff returns the first key, in sorted order, whose mod revision
// differs between a and b (a key missing on one side differs).
func DigestDiff(a, b map[string]int64) (string, bool) {
	keys := append(slices.Collect(maps.Keys(a)), slices.Collect(maps.Keys(b))...)
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		av, aok := a[k]
		bv, bok := b[k]
		if aok != bok || av != bv {
			return k, true
		}
	}
	return "", false
}
