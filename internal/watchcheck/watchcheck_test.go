package watchcheck

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/storage"
)

// The fixture: what etcd did, under "/a/" and beside it.
//
//	rev 2  put /a/x x1 (v1)       rev 6  delete /a/y
//	rev 3  put /a/y y1 (v1)       rev 7  put /a/y y2 (v1, re-created)
//	rev 4  txn: put /a/x x2 (v2)  rev 8  put /a/x x3 (v3)
//	            put /a/z z1 (v1)  rev 9  delete /a/z
//	rev 5  put /ab/q q1 (outside) rev 10 put /a/w w1 (v1)
func fixtureTruth() []Truth {
	return []Truth{
		tp(2, "/a/x", "x1", 1, 2),
		tp(3, "/a/y", "y1", 1, 3),
		tp(4, "/a/x", "x2", 2, 2),
		tp(4, "/a/z", "z1", 1, 4),
		tp(5, "/ab/q", "q1", 1, 5),
		td(6, "/a/y"),
		tp(7, "/a/y", "y2", 1, 7),
		tp(8, "/a/x", "x3", 3, 2),
		td(9, "/a/z"),
		tp(10, "/a/w", "w1", 1, 10),
	}
}

// fixtureFinal is a fresh read of "/a/" at revision 10.
func fixtureFinal() map[string]KV {
	return map[string]KV{"/a/x": {"x3", 3}, "/a/y": {"y2", 1}, "/a/w": {"w1", 1}}
}

// goodHistory reads at 3, watches every change after it and resumes once
// after revision 6 (event 5 is the first after the restart).
func goodHistory() History {
	return History{
		Prefix:  "/a",
		ReadRev: 3,
		Events: []Delivered{
			re(3, "/a/x", "x1", 1),  // 0
			re(3, "/a/y", "y1", 1),  // 1
			pe(4, "/a/x", "x2", 2),  // 2
			pe(4, "/a/z", "z1", 1),  // 3
			de(6, "/a/y"),           // 4
			pe(7, "/a/y", "y2", 1),  // 5
			pe(8, "/a/x", "x3", 3),  // 6
			de(9, "/a/z"),           // 7
			pe(10, "/a/w", "w1", 1), // 8
		},
		Restarts: []Restart{{At: 5, LastRev: 6}},
	}
}

// bridgedHistory loses its watch after revision 4; etcd compacted past
// it, so it re-reads at 9 (x changed, y deleted and re-created, z vanished)
// and watches on.
func bridgedHistory() History {
	return History{
		Prefix:  "/a",
		ReadRev: 3,
		Events: []Delivered{
			re(3, "/a/x", "x1", 1),  // 0
			re(3, "/a/y", "y1", 1),  // 1
			pe(4, "/a/x", "x2", 2),  // 2
			pe(4, "/a/z", "z1", 1),  // 3
			re(9, "/a/x", "x3", 3),  // 4
			re(9, "/a/y", "y2", 1),  // 5
			rd(9, "/a/z"),           // 6
			pe(10, "/a/w", "w1", 1), // 7
		},
		Restarts: []Restart{{At: 4, LastRev: 4, ReadRev: 9}},
	}
}

func tp(rev int64, key, value string, version, createRev int64) Truth {
	return Truth{Revision: rev, Key: key, Type: storage.EventTypePut, Value: value, Version: version, CreateRevision: createRev}
}

func td(rev int64, key string) Truth {
	return Truth{Revision: rev, Key: key, Type: storage.EventTypeDelete}
}

// pe is a watch put; in the fixture version 1 is always a creation.
func pe(rev int64, key, value string, version int64) Delivered {
	return Delivered{Revision: rev, Key: key, Type: storage.EventTypePut, Value: value, Version: version,
		IsCreate: version == 1, IsModify: version > 1}
}

func de(rev int64, key string) Delivered {
	return Delivered{Revision: rev, Key: key, Type: storage.EventTypeDelete}
}

func re(rev int64, key, value string, version int64) Delivered {
	e := pe(rev, key, value, version)
	e.FromRead = true
	return e
}

func rd(rev int64, key string) Delivered {
	e := de(rev, key)
	e.FromRead = true
	return e
}

// edit returns a copy of h changed by edit.
func edit(h History, edit func(h *History)) History {
	h.Events = slices.Clone(h.Events)
	h.Restarts = slices.Clone(h.Restarts)
	edit(&h)
	return h
}

// Shared bad histories, built from the good one.
func dropped() History { // x3@8 never arrives
	return edit(goodHistory(), func(h *History) { h.Events = slices.Delete(h.Events, 6, 7) })
}

func duplicated() History { // y2@7 arrives twice
	return edit(goodHistory(), func(h *History) { h.Events = slices.Insert(h.Events, 6, h.Events[5]) })
}

func reordered() History { // x3@8 before y2@7
	return edit(goodHistory(), func(h *History) { h.Events[5], h.Events[6] = h.Events[6], h.Events[5] })
}

func splitTxn() History { // z1@4 of the rev 4 txn is lost
	return edit(goodHistory(), func(h *History) { h.Events = slices.Delete(h.Events, 3, 4) })
}

func splitAcrossGap() History { // z1@4 arrives after delete y@6
	return edit(goodHistory(), func(h *History) {
		z := h.Events[3]
		h.Events = slices.Insert(slices.Delete(h.Events, 3, 4), 4, z)
	})
}

func resumeSkips() History { // the restart after 6 resumes at 8, losing y2@7
	return edit(goodHistory(), func(h *History) { h.Events = slices.Delete(h.Events, 5, 6) })
}

func outsidePrefix() History { // /ab/q leaks into a watch of "/a"
	return edit(goodHistory(), func(h *History) { h.Events = slices.Insert(h.Events, 4, pe(5, "/ab/q", "q1", 1)) })
}

func badReRead() History { // the re-read forgets that z vanished
	return edit(bridgedHistory(), func(h *History) { h.Events = slices.Delete(h.Events, 6, 7) })
}

// checkCase is an input to a checker (a watch's history, a cache's reads),
// and whether the checker must reject it.
type checkCase[T any] struct {
	name string
	in   T
	bad  bool
}

// runCases runs check on each case: bad ones must fail with sentinel, good
// ones must pass.
func runCases[T any](t *testing.T, sentinel error, check func(T) error, cases []checkCase[T]) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := check(c.in)
			if !c.bad {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, sentinel)
			t.Log(err)
		})
	}
}

func TestEveryCheckerAcceptsGoodHistories(t *testing.T) {
	emptyRead := History{
		Prefix:  "/a/",
		ReadRev: 1,
		Events: []Delivered{
			pe(2, "/a/x", "x1", 1), pe(3, "/a/y", "y1", 1),
			pe(4, "/a/z", "z1", 1), pe(4, "/a/x", "x2", 2), // txn keys in another order
			de(6, "/a/y"), pe(7, "/a/y", "y2", 1), pe(8, "/a/x", "x3", 3),
			de(9, "/a/z"), pe(10, "/a/w", "w1", 1),
		},
	}
	for _, c := range []checkCase[History]{
		{name: "a watch that resumes without a gap", in: goodHistory()},
		{name: "a compaction bridged by a correct re-read", in: bridgedHistory()},
		{name: "an empty initial read and a txn's keys in another order", in: emptyRead},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.NoError(t, Watch(c.in, fixtureTruth()))
			require.NoError(t, Replay(c.in, fixtureFinal()))
		})
	}
}

func TestOrdered(t *testing.T) {
	runCases(t, ErrOrdered, Ordered, []checkCase[History]{
		{name: "in order is accepted", in: goodHistory()},
		{name: "a re-read above the last delivered revision is accepted", in: bridgedHistory()},
		{name: "a reorder is rejected", in: reordered(), bad: true},
		{name: "a txn split across a gap is rejected", in: splitAcrossGap(), bad: true},
		{name: "a read item off its read's revision is rejected", bad: true,
			in: edit(bridgedHistory(), func(h *History) { h.Events[5].Revision = 8 })},
		{name: "a read item outside any read is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[6].FromRead = true })},
		{name: "a watch event at the read's revision is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[2].Revision = 3 })},
		{name: "a re-read not above the last delivered revision is rejected", bad: true,
			in: edit(bridgedHistory(), func(h *History) {
				h.Restarts[0].ReadRev = 4
				for i := 4; i < 7; i++ {
					h.Events[i].Revision = 4
				}
			})},
	})
}

func TestUnique(t *testing.T) {
	runCases(t, ErrUnique, Unique, []checkCase[History]{
		{name: "each change once is accepted", in: goodHistory()},
		{name: "read items sharing a revision are accepted", in: bridgedHistory()},
		{name: "a duplicate is rejected", in: duplicated(), bad: true},
	})
}

func TestAtomic(t *testing.T) {
	check := func(h History) error { return Atomic(h, fixtureTruth()) }
	runCases(t, ErrAtomic, check, []checkCase[History]{
		{name: "whole txns are accepted", in: goodHistory()},
		{name: "a bridged compaction is accepted", in: bridgedHistory()},
		{name: "a txn missing a key is rejected", in: splitTxn(), bad: true},
		{name: "a txn split across a gap is rejected", in: splitAcrossGap(), bad: true},
		{name: "a key the revision did not write is rejected", in: outsidePrefix(), bad: true},
		{name: "a history ending in half a txn is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events = h.Events[:3] })},
	})
}

func TestReliable(t *testing.T) {
	check := func(h History) error { return Reliable(h, fixtureTruth()) }
	runCases(t, ErrReliable, check, []checkCase[History]{
		{name: "every change once is accepted", in: goodHistory()},
		{name: "a compaction bridged by a correct re-read is accepted", in: bridgedHistory()},
		{name: "a stop before the end of the truth is accepted", in: edit(goodHistory(), func(h *History) { h.Events = h.Events[:6] })},
		{name: "a dropped middle event is rejected", in: dropped(), bad: true},
		{name: "a duplicate is rejected", in: duplicated(), bad: true},
		{name: "a reorder is rejected", in: reordered(), bad: true},
		{name: "a resume that skips its first event is rejected", in: resumeSkips(), bad: true},
		{name: "a history ending in half a txn is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events = h.Events[:3] })},
		{name: "a re-read missing a vanished key's delete is rejected", in: badReRead(), bad: true},
		{name: "a re-read with a stale value is rejected", bad: true,
			in: edit(bridgedHistory(), func(h *History) { h.Events[4] = re(9, "/a/x", "x2", 2) })},
		{name: "an initial read that differs from etcd is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events = h.Events[1:] })},
		{name: "a wrong value is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[6].Value = "x9" })},
		{name: "an error event is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[6].Type = storage.EventTypeError })},
		{name: "a history without an initial read revision is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.ReadRev = 0; h.Events = h.Events[2:] })},
	})
}

func TestResumable(t *testing.T) {
	check := func(h History) error { return Resumable(h, fixtureTruth()) }
	runCases(t, ErrResumable, check, []checkCase[History]{
		{name: "a resume at the next change is accepted", in: goodHistory()},
		{name: "a resume bridged by a re-read is accepted", in: bridgedHistory()},
		{name: "a failed resume followed by a re-read at the same event is accepted",
			in: edit(bridgedHistory(), func(h *History) {
				h.Restarts = append([]Restart{{At: 4, LastRev: 4}}, h.Restarts...)
			})},
		{name: "a restart with nothing after it is accepted",
			in: edit(goodHistory(), func(h *History) { h.Events = h.Events[:5] })},
		{name: "a resume that skips its first event is rejected", in: resumeSkips(), bad: true},
		{name: "a resume that repeats the last delivered revision is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events = slices.Insert(h.Events, 5, h.Events[4]) })},
		{name: "a restart whose last revision is not the event before it is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Restarts[0].LastRev = 4 })},
	})
}

func TestFilter(t *testing.T) {
	runCases(t, ErrFilter, Filter, []checkCase[History]{
		{name: "keys under the prefix are accepted", in: goodHistory()},
		{name: "/ab/q under a watch of /a is rejected", in: outsidePrefix(), bad: true},
		{name: "a key outside the prefix in a read is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[0].Key = "/b/x" })},
	})
}

func TestFlags(t *testing.T) {
	check := func(h History) error { return Flags(h, fixtureTruth()) }
	runCases(t, ErrFlags, check, []checkCase[History]{
		{name: "flags from etcd are accepted", in: goodHistory()},
		{name: "flags of re-read items by version are accepted", in: bridgedHistory()},
		{name: "a re-created key that is not IsCreate is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[5].IsCreate, h.Events[5].IsModify = false, true })},
		{name: "a modify flagged IsCreate is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[6].IsCreate = true })},
		{name: "a read item at version 3 flagged IsCreate is rejected", bad: true,
			in: edit(bridgedHistory(), func(h *History) { h.Events[4].IsCreate, h.Events[4].IsModify = true, false })},
		{name: "a delete flagged IsModify is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[4].IsModify = true })},
	})
}

func TestReplay(t *testing.T) {
	final := fixtureFinal()
	check := func(h History) error { return Replay(h, final) }
	runCases(t, ErrReplay, check, []checkCase[History]{
		{name: "a full history is accepted", in: goodHistory()},
		{name: "a bridged history is accepted", in: bridgedHistory()},
		{name: "a dropped middle event is rejected", in: dropped(), bad: true},
		{name: "a re-read missing a delete is rejected", in: badReRead(), bad: true},
		{name: "a wrong version is rejected", bad: true,
			in: edit(goodHistory(), func(h *History) { h.Events[6].Version = 2 })},
	})
}

func TestCacheMonotonic(t *testing.T) {
	runCases(t, ErrBackInTime, CacheMonotonic, []checkCase[[]CacheRead]{
		{name: "newer reads are accepted", in: []CacheRead{
			{Key: "/a/x", ModRevision: 2, Start: 1, End: 2},
			{Key: "/a/x", ModRevision: 4, Start: 3, End: 4},
			{Key: "/a/y", ModRevision: 3, Start: 5, End: 6},
			{Key: "/a/x", ModRevision: 0, Start: 7, End: 8}, // deleted meanwhile
			{Key: "/a/x", ModRevision: 9, Start: 9, End: 10},
		}},
		{name: "overlapping reads may disagree", in: []CacheRead{
			{Key: "/a/x", ModRevision: 4, Start: 1, End: 4},
			{Key: "/a/x", ModRevision: 2, Start: 2, End: 3},
		}},
		{name: "a read that goes back in time is rejected", bad: true, in: []CacheRead{
			{Key: "/a/x", ModRevision: 4, Start: 1, End: 2},
			{Key: "/a/x", ModRevision: 2, Start: 3, End: 4},
		}},
		{name: "a re-created key older than before its delete is rejected", bad: true, in: []CacheRead{
			{Key: "/a/x", ModRevision: 8, Start: 1, End: 2},
			{Key: "/a/x", ModRevision: 0, Start: 3, End: 4},
			{Key: "/a/x", ModRevision: 4, Start: 5, End: 6},
		}},
	})
}

func TestDigestDiff(t *testing.T) {
	for _, c := range []struct {
		name string
		a, b map[string]int64
		want string
	}{
		{name: "equal digests do not differ", a: map[string]int64{"/a/x": 2, "/a/y": 3}, b: map[string]int64{"/a/y": 3, "/a/x": 2}},
		{name: "empty digests do not differ", a: nil, b: map[string]int64{}},
		{name: "the first differing key in order is named",
			a: map[string]int64{"/a/x": 2, "/a/y": 3, "/a/z": 4}, b: map[string]int64{"/a/x": 2, "/a/y": 5, "/a/z": 5}, want: "/a/y"},
		{name: "a key missing on one side differs",
			a: map[string]int64{"/a/x": 2, "/a/z": 4}, b: map[string]int64{"/a/w": 1, "/a/x": 2, "/a/z": 4}, want: "/a/w"},
	} {
		t.Run(c.name, func(t *testing.T) {
			key, differs := DigestDiff(c.a, c.b)
			require.Equal(t, c.want != "", differs)
			require.Equal(t, c.want, key)
		})
	}
}
