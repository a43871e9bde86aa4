//go:build storage_testhooks

package storage_test

// The chaos test's canaries: broken watch variants (testhooks_on.go) that
// the checkers must catch, and the proof from a run's log that the broken
// path was taken.

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/etcdkit/storage/internal/watchcheck"
)

// canaryUnmet says which precondition of the run's canary did not occur on
// w (the broken watch), or "" when it did: the broken path was taken in a
// way that changes what the watch delivers, so the checkers must catch it.
// ended tells whether w's run had ended by itself before Close.
func (r *chaosTrial) canaryUnmet(w *historyRec, ended bool, truth []watchcheck.Truth) string {
	starts, ahead := w.evidence()
	changed := map[int64]bool{} // revisions with a change under the watched prefix
	for _, t := range watchcheck.InPrefix(truth, w.prefix) {
		changed[t.Revision] = true
	}
	skipsChanges := func(a resumeAhead) bool {
		for rev := a.Reached + 1; rev <= a.From; rev++ {
			if changed[rev] {
				return true
			}
		}
		return false
	}
	r.mu.Lock()
	compacted := slices.Clone(r.compact)
	r.mu.Unlock()
	switch r.opt.canary {
	case "resume-from-header":
		// A resume from a header revision ahead of the last delivered event,
		// past changes never delivered.
		if slices.ContainsFunc(ahead, skipsChanges) {
			return ""
		}
		return fmt.Sprintf("precondition not met: no resume of %s started from a revision ahead of its last delivered event "+
			"past undelivered changes (%d resumes ahead, none skipping a change)", w.name, len(ahead))
	case "no-relist":
		// A compaction response met: the canary resumes after the compact
		// revision - 1, past changes never delivered.
		if slices.ContainsFunc(ahead, func(a resumeAhead) bool { return slices.Contains(compacted, a.From+1) && skipsChanges(a) }) {
			return ""
		}
		return fmt.Sprintf("precondition not met: %s never met a compaction past undelivered changes (%d compactions, %d resumes ahead)",
			w.name, len(compacted), len(ahead))
	case "watch-from-read-rev":
		// A watch started at a revision holding a change, which starting
		// one revision early delivers again.
		if slices.ContainsFunc(starts, func(rev int64) bool { return changed[rev] }) {
			return ""
		}
		return fmt.Sprintf("precondition not met: no watch of %s started after a revision holding a change (starts %v)", w.name, starts)
	case "closed-is-end":
		if ended {
			return ""
		}
		return fmt.Sprintf("precondition not met: no watch channel of %s closed (its run never ended)", w.name)
	}
	return fmt.Sprintf("unknown canary %q", r.opt.canary)
}

// TestChaosCanaries breaks watch w0 and cache c0 with each canary in turn,
// under a fault that exercises the broken path, and requires the checkers to
// reject the broken watch's history. A run first proves from its own log
// that the broken path was taken (canaryUnmet); a run where it was not, or
// one too slow to judge, is repeated with another seed, up to
// chaosCanaryTries runs.
func TestChaosCanaries(t *testing.T) {
	cc := newChaosCluster(t)
	cases := []struct {
		canary string
		faults []string
	}{
		{"resume-from-header", []string{"burst"}},
		{"no-relist", []string{"compact"}},
		{"watch-from-read-rev", []string{"partition"}},
		{"closed-is-end", []string{"partition"}},
	}
	for i, c := range cases {
		var res chaosResult
		for try := range chaosCanaryTries {
			res = runChaos(t, cc, chaosOptions{seed: uint64(1000 + i + 10*try), faults: c.faults, canary: c.canary,
				converge: 4 * time.Second})
			t.Logf("canary %s, run %d: %s", c.canary, try, res.summary)
			for _, v := range res.viol {
				if v.Subject != "w0" && v.Subject != "c0" {
					t.Errorf("canary %s (seed %d): a healthy subject failed: %s: %s", c.canary, 1000+i+10*try, v.Subject, v.Msg)
				}
			}
			// A run judges the canary once its broken path was taken; a run
			// too slow to judge counts only if it caught the canary anyway.
			if res.unmet == "" && (res.tooSlow == "" || len(res.caught("w0")) > 0) {
				break
			}
		}
		if res.unmet != "" {
			t.Errorf("canary %s: %s, in each of %d runs", c.canary, res.unmet, chaosCanaryTries)
			continue
		}
		caught := res.caught("w0")
		if len(caught) == 0 && res.tooSlow != "" {
			t.Errorf("canary %s: every run of %d was too slow to judge (last: %s)", c.canary, chaosCanaryTries, res.tooSlow)
			continue
		}
		if len(caught) == 0 {
			t.Errorf("canary %s was not caught: the checkers accepted watch w0's history (other violations: %v)", c.canary, res.viol)
			continue
		}
		t.Logf("canary %s caught on w0: %s", c.canary, caught[0])
		t.Logf("canary %s on cache c0: %d violations %v", c.canary, len(res.caught("c0")), res.caught("c0"))
	}
}
