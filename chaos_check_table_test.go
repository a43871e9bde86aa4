package storage_test

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
func chaosFixtureTruth() []chaosTruth {
	return []chaosTruth{
		chaosTP(2, "/a/x", "x1", 1, 2),
		chaosTP(3, "/a/y", "y1", 1, 3),
		chaosTP(4, "/a/x", "x2", 2, 2),
		chaosTP(4, "/a/z", "z1", 1, 4),
		chaosTP(5, "/ab/q", "q1", 1, 5),
		chaosTD(6, "/a/y"),
		chaosTP(7, "/a/y", "y2", 1, 7),
		chaosTP(8, "/a/x", "x3", 3, 2),
		chaosTD(9, "/a/z"),
		chaosTP(10, "/a/w", "w1", 1, 10),
	}
}

// chaosFixtureFinal is a fresh read of "/a/" at revision 10.
func chaosFixtureFinal() map[string]chaosKV {
	return map[string]chaosKV{"/a/x": {"x3", 3}, "/a/y": {"y2", 1}, "/a/w": {"w1", 1}}
}

// chaosGoodHistory reads at 3, watches every change after it and resumes once
// after revision 6 (event 5 is the first after the restart).
func chaosGoodHistory() chaosHistory {
	return chaosHistory{
		Prefix:  "/a",
		ReadRev: 3,
		Events: []chaosDelivered{
			chaosR(3, "/a/x", "x1", 1),  // 0
			chaosR(3, "/a/y", "y1", 1),  // 1
			chaosP(4, "/a/x", "x2", 2),  // 2
			chaosP(4, "/a/z", "z1", 1),  // 3
			chaosD(6, "/a/y"),           // 4
			chaosP(7, "/a/y", "y2", 1),  // 5
			chaosP(8, "/a/x", "x3", 3),  // 6
			chaosD(9, "/a/z"),           // 7
			chaosP(10, "/a/w", "w1", 1), // 8
		},
		Restarts: []chaosRestart{{At: 5, LastRev: 6}},
	}
}

// chaosBridgedHistory loses its watch after revision 4; etcd compacted past
// it, so it re-reads at 9 (x changed, y deleted and re-created, z vanished)
// and watches on.
func chaosBridgedHistory() chaosHistory {
	return chaosHistory{
		Prefix:  "/a",
		ReadRev: 3,
		Events: []chaosDelivered{
			chaosR(3, "/a/x", "x1", 1),  // 0
			chaosR(3, "/a/y", "y1", 1),  // 1
			chaosP(4, "/a/x", "x2", 2),  // 2
			chaosP(4, "/a/z", "z1", 1),  // 3
			chaosR(9, "/a/x", "x3", 3),  // 4
			chaosR(9, "/a/y", "y2", 1),  // 5
			chaosRD(9, "/a/z"),          // 6
			chaosP(10, "/a/w", "w1", 1), // 7
		},
		Restarts: []chaosRestart{{At: 4, LastRev: 4, ReadRev: 9}},
	}
}

func chaosTP(rev int64, key, value string, version, createRev int64) chaosTruth {
	return chaosTruth{Revision: rev, Key: key, Type: storage.EventTypePut, Value: value, Version: version, CreateRevision: createRev}
}

func chaosTD(rev int64, key string) chaosTruth {
	return chaosTruth{Revision: rev, Key: key, Type: storage.EventTypeDelete}
}

// chaosP is a watch put; in the fixture version 1 is always a creation.
func chaosP(rev int64, key, value string, version int64) chaosDelivered {
	return chaosDelivered{Revision: rev, Key: key, Type: storage.EventTypePut, Value: value, Version: version,
		IsCreate: version == 1, IsModify: version > 1}
}

func chaosD(rev int64, key string) chaosDelivered {
	return chaosDelivered{Revision: rev, Key: key, Type: storage.EventTypeDelete}
}

func chaosR(rev int64, key, value string, version int64) chaosDelivered {
	e := chaosP(rev, key, value, version)
	e.FromRead = true
	return e
}

func chaosRD(rev int64, key string) chaosDelivered {
	e := chaosD(rev, key)
	e.FromRead = true
	return e
}

// chaosEdit returns a copy of h changed by edit.
func chaosEdit(h chaosHistory, edit func(h *chaosHistory)) chaosHistory {
	h.Events = slices.Clone(h.Events)
	h.Restarts = slices.Clone(h.Restarts)
	edit(&h)
	return h
}

// Shared bad histories, built from the good one.
func chaosDropped() chaosHistory { // x3@8 never arrives
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = slices.Delete(h.Events, 6, 7) })
}

func chaosDuplicated() chaosHistory { // y2@7 arrives twice
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = slices.Insert(h.Events, 6, h.Events[5]) })
}

func chaosReordered() chaosHistory { // x3@8 before y2@7
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[5], h.Events[6] = h.Events[6], h.Events[5] })
}

func chaosSplitTxn() chaosHistory { // z1@4 of the rev 4 txn is lost
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = slices.Delete(h.Events, 3, 4) })
}

func chaosSplitAcrossGap() chaosHistory { // z1@4 arrives after delete y@6
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) {
		z := h.Events[3]
		h.Events = slices.Insert(slices.Delete(h.Events, 3, 4), 4, z)
	})
}

func chaosResumeSkips() chaosHistory { // the restart after 6 resumes at 8, losing y2@7
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = slices.Delete(h.Events, 5, 6) })
}

func chaosOutsidePrefix() chaosHistory { // /ab/q leaks into a watch of "/a"
	return chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = slices.Insert(h.Events, 4, chaosP(5, "/ab/q", "q1", 1)) })
}

func chaosBadReRead() chaosHistory { // the re-read forgets that z vanished
	return chaosEdit(chaosBridgedHistory(), func(h *chaosHistory) { h.Events = slices.Delete(h.Events, 6, 7) })
}

type chaosCase struct {
	name string
	h    chaosHistory
	bad  bool
}

// chaosRun runs check on each case: bad ones must fail with sentinel, good
// ones must pass.
func chaosRun(t *testing.T, sentinel error, check func(chaosHistory) error, cases []chaosCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := check(c.h)
			if !c.bad {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, sentinel)
			t.Log(err)
		})
	}
}

func TestChaosCheckAllAcceptGoodHistories(t *testing.T) {
	emptyRead := chaosHistory{
		Prefix:  "/a/",
		ReadRev: 1,
		Events: []chaosDelivered{
			chaosP(2, "/a/x", "x1", 1), chaosP(3, "/a/y", "y1", 1),
			chaosP(4, "/a/z", "z1", 1), chaosP(4, "/a/x", "x2", 2), // txn keys in another order
			chaosD(6, "/a/y"), chaosP(7, "/a/y", "y2", 1), chaosP(8, "/a/x", "x3", 3),
			chaosD(9, "/a/z"), chaosP(10, "/a/w", "w1", 1),
		},
	}
	for _, c := range []chaosCase{
		{name: "a watch that resumes without a gap", h: chaosGoodHistory()},
		{name: "a compaction bridged by a correct re-read", h: chaosBridgedHistory()},
		{name: "an empty initial read and a txn's keys in another order", h: emptyRead},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.NoError(t, chaosCheckWatch(c.h, chaosFixtureTruth()))
			require.NoError(t, chaosCheckReplay(c.h, chaosFixtureFinal()))
		})
	}
}

func TestChaosCheckOrdered(t *testing.T) {
	chaosRun(t, errChaosOrdered, chaosCheckOrdered, []chaosCase{
		{name: "in order is accepted", h: chaosGoodHistory()},
		{name: "a re-read above the last delivered revision is accepted", h: chaosBridgedHistory()},
		{name: "a reorder is rejected", h: chaosReordered(), bad: true},
		{name: "a txn split across a gap is rejected", h: chaosSplitAcrossGap(), bad: true},
		{name: "a read item off its read's revision is rejected", bad: true,
			h: chaosEdit(chaosBridgedHistory(), func(h *chaosHistory) { h.Events[5].Revision = 8 })},
		{name: "a read item outside any read is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[6].FromRead = true })},
		{name: "a watch event at the read's revision is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[2].Revision = 3 })},
		{name: "a re-read not above the last delivered revision is rejected", bad: true,
			h: chaosEdit(chaosBridgedHistory(), func(h *chaosHistory) {
				h.Restarts[0].ReadRev = 4
				for i := 4; i < 7; i++ {
					h.Events[i].Revision = 4
				}
			})},
	})
}

func TestChaosCheckUnique(t *testing.T) {
	chaosRun(t, errChaosUnique, chaosCheckUnique, []chaosCase{
		{name: "each change once is accepted", h: chaosGoodHistory()},
		{name: "read items sharing a revision are accepted", h: chaosBridgedHistory()},
		{name: "a duplicate is rejected", h: chaosDuplicated(), bad: true},
	})
}

func TestChaosCheckAtomic(t *testing.T) {
	check := func(h chaosHistory) error { return chaosCheckAtomic(h, chaosFixtureTruth()) }
	chaosRun(t, errChaosAtomic, check, []chaosCase{
		{name: "whole txns are accepted", h: chaosGoodHistory()},
		{name: "a bridged compaction is accepted", h: chaosBridgedHistory()},
		{name: "a txn missing a key is rejected", h: chaosSplitTxn(), bad: true},
		{name: "a txn split across a gap is rejected", h: chaosSplitAcrossGap(), bad: true},
		{name: "a key the revision did not write is rejected", h: chaosOutsidePrefix(), bad: true},
		{name: "a history ending in half a txn is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = h.Events[:3] })},
	})
}

func TestChaosCheckReliable(t *testing.T) {
	check := func(h chaosHistory) error { return chaosCheckReliable(h, chaosFixtureTruth()) }
	chaosRun(t, errChaosReliable, check, []chaosCase{
		{name: "every change once is accepted", h: chaosGoodHistory()},
		{name: "a compaction bridged by a correct re-read is accepted", h: chaosBridgedHistory()},
		{name: "a stop before the end of the truth is accepted", h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = h.Events[:6] })},
		{name: "a dropped middle event is rejected", h: chaosDropped(), bad: true},
		{name: "a duplicate is rejected", h: chaosDuplicated(), bad: true},
		{name: "a reorder is rejected", h: chaosReordered(), bad: true},
		{name: "a resume that skips its first event is rejected", h: chaosResumeSkips(), bad: true},
		{name: "a history ending in half a txn is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = h.Events[:3] })},
		{name: "a re-read missing a vanished key's delete is rejected", h: chaosBadReRead(), bad: true},
		{name: "a re-read with a stale value is rejected", bad: true,
			h: chaosEdit(chaosBridgedHistory(), func(h *chaosHistory) { h.Events[4] = chaosR(9, "/a/x", "x2", 2) })},
		{name: "an initial read that differs from etcd is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = h.Events[1:] })},
		{name: "a wrong value is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[6].Value = "x9" })},
		{name: "an error event is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[6].Type = storage.EventTypeError })},
		{name: "a history without an initial read revision is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.ReadRev = 0; h.Events = h.Events[2:] })},
	})
}

func TestChaosCheckResumable(t *testing.T) {
	check := func(h chaosHistory) error { return chaosCheckResumable(h, chaosFixtureTruth()) }
	chaosRun(t, errChaosResumable, check, []chaosCase{
		{name: "a resume at the next change is accepted", h: chaosGoodHistory()},
		{name: "a resume bridged by a re-read is accepted", h: chaosBridgedHistory()},
		{name: "a failed resume followed by a re-read at the same event is accepted",
			h: chaosEdit(chaosBridgedHistory(), func(h *chaosHistory) {
				h.Restarts = append([]chaosRestart{{At: 4, LastRev: 4}}, h.Restarts...)
			})},
		{name: "a restart with nothing after it is accepted",
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = h.Events[:5] })},
		{name: "a resume that skips its first event is rejected", h: chaosResumeSkips(), bad: true},
		{name: "a resume that repeats the last delivered revision is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events = slices.Insert(h.Events, 5, h.Events[4]) })},
		{name: "a restart whose last revision is not the event before it is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Restarts[0].LastRev = 4 })},
	})
}

func TestChaosCheckFilter(t *testing.T) {
	chaosRun(t, errChaosFilter, chaosCheckFilter, []chaosCase{
		{name: "keys under the prefix are accepted", h: chaosGoodHistory()},
		{name: "/ab/q under a watch of /a is rejected", h: chaosOutsidePrefix(), bad: true},
		{name: "a key outside the prefix in a read is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[0].Key = "/b/x" })},
	})
}

func TestChaosCheckFlags(t *testing.T) {
	check := func(h chaosHistory) error { return chaosCheckFlags(h, chaosFixtureTruth()) }
	chaosRun(t, errChaosFlags, check, []chaosCase{
		{name: "flags from etcd are accepted", h: chaosGoodHistory()},
		{name: "flags of re-read items by version are accepted", h: chaosBridgedHistory()},
		{name: "a re-created key that is not IsCreate is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[5].IsCreate, h.Events[5].IsModify = false, true })},
		{name: "a modify flagged IsCreate is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[6].IsCreate = true })},
		{name: "a read item at version 3 flagged IsCreate is rejected", bad: true,
			h: chaosEdit(chaosBridgedHistory(), func(h *chaosHistory) { h.Events[4].IsCreate, h.Events[4].IsModify = true, false })},
		{name: "a delete flagged IsModify is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[4].IsModify = true })},
	})
}

func TestChaosCheckReplay(t *testing.T) {
	final := chaosFixtureFinal()
	check := func(h chaosHistory) error { return chaosCheckReplay(h, final) }
	chaosRun(t, errChaosReplay, check, []chaosCase{
		{name: "a full history is accepted", h: chaosGoodHistory()},
		{name: "a bridged history is accepted", h: chaosBridgedHistory()},
		{name: "a dropped middle event is rejected", h: chaosDropped(), bad: true},
		{name: "a re-read missing a delete is rejected", h: chaosBadReRead(), bad: true},
		{name: "a wrong version is rejected", bad: true,
			h: chaosEdit(chaosGoodHistory(), func(h *chaosHistory) { h.Events[6].Version = 2 })},
	})
}

func TestChaosCheckCacheMonotonic(t *testing.T) {
	for _, c := range []struct {
		name  string
		reads []chaosCacheRead
		bad   bool
	}{
		{name: "newer reads are accepted", reads: []chaosCacheRead{
			{Key: "/a/x", ModRevision: 2, Start: 1, End: 2},
			{Key: "/a/x", ModRevision: 4, Start: 3, End: 4},
			{Key: "/a/y", ModRevision: 3, Start: 5, End: 6},
			{Key: "/a/x", ModRevision: 0, Start: 7, End: 8}, // deleted meanwhile
			{Key: "/a/x", ModRevision: 9, Start: 9, End: 10},
		}},
		{name: "overlapping reads may disagree", reads: []chaosCacheRead{
			{Key: "/a/x", ModRevision: 4, Start: 1, End: 4},
			{Key: "/a/x", ModRevision: 2, Start: 2, End: 3},
		}},
		{name: "a read that goes back in time is rejected", bad: true, reads: []chaosCacheRead{
			{Key: "/a/x", ModRevision: 4, Start: 1, End: 2},
			{Key: "/a/x", ModRevision: 2, Start: 3, End: 4},
		}},
		{name: "a re-created key older than before its delete is rejected", bad: true, reads: []chaosCacheRead{
			{Key: "/a/x", ModRevision: 8, Start: 1, End: 2},
			{Key: "/a/x", ModRevision: 0, Start: 3, End: 4},
			{Key: "/a/x", ModRevision: 4, Start: 5, End: 6},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := chaosCheckCacheMonotonic(c.reads)
			if !c.bad {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, errChaosBackInTime)
			t.Log(err)
		})
	}
}

func TestChaosCheckDigestDiff(t *testing.T) {
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
			key, differs := chaosDigestDiff(c.a, c.b)
			require.Equal(t, c.want != "", differs)
			require.Equal(t, c.want, key)
		})
	}
}
