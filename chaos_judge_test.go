//go:build storage_testhooks

package storage_test

// The chaos test's verdict (chaos_test.go): the digest checks during a run,
// and after it the checks of internal/watchcheck on every watch and cache,
// the writes against the ground truth, and the dump of a failed run.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/watchcheck"
)

// digest pauses the writers, waits until etcd's current revision reached the
// ground truth, and checks that each cache's digest (key -> mod revision)
// converges to the truth's at its newest revision (keys with a TTL may
// still expire meanwhile: every poll compares with the newest truth).
func (r *chaosTrial) digest(ctx context.Context, when string) {
	r.gate.Lock()
	defer r.gate.Unlock()
	rev, err := r.cc.revision(ctx)
	if err != nil {
		r.violate("", "digest %s: read the revision: %v", when, err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	if err := r.rec.waitReached(wctx, rev); err != nil {
		r.violate("", "digest %s: %v", when, err)
		return
	}
	for _, s := range r.caches {
		sctx, cancel := context.WithTimeout(ctx, r.converge(s.name))
		if msg := r.cacheConverges(sctx, s, false); msg != "" {
			r.violate(s.name, "digest %s (truth at revision %d or later): %s", when, rev, msg)
		}
		cancel()
	}
}

// converge bounds the waits for subject to converge: chaosConverge, or the
// run's lower bound for a subject broken on purpose, which may never do.
func (r *chaosTrial) converge(subject string) time.Duration {
	if r.opt.canary != "" && (subject == "w0" || subject == "c0") {
		return r.opt.converge
	}
	return chaosConverge
}

// cacheConverges polls until the cache equals the ground truth's newest
// state, by mod revision, or with values and versions too (full); it
// returns the last difference if it does not before ctx ends.
func (r *chaosTrial) cacheConverges(ctx context.Context, s *chaosCacheSubj, full bool) string {
	var msg string
	for {
		truth, err := r.rec.snapshot()
		if err != nil {
			return err.Error()
		}
		items, err := s.c.GetPrefix("").Exec(ctx)
		if err != nil {
			return "read: " + err.Error()
		}
		msg = chaosCacheDiff(truth, items, full)
		if msg == "" {
			return ""
		}
		select { // the cache catches up; poll with the deadline
		case <-ctx.Done():
			return msg
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// chaosCacheDiff compares cache items with the fold of the whole truth.
func chaosCacheDiff(truth []watchcheck.Truth, items []*taggedValue, full bool) string {
	wantRev, gotRev := map[string]int64{}, map[string]int64{}
	want := map[string]watchcheck.KV{}
	for _, t := range truth {
		if t.Type == storage.EventTypeDelete {
			delete(wantRev, t.Key)
			delete(want, t.Key)
			continue
		}
		wantRev[t.Key] = t.Revision
		want[t.Key] = watchcheck.KV{Value: t.Value, Version: t.Version}
	}
	got := map[string]watchcheck.KV{}
	for _, v := range items {
		gotRev[v.Key] = v.ModRevision()
		got[v.Key] = watchcheck.KV{Value: v.Tag, Version: v.Version()}
	}
	if k, ok := watchcheck.DigestDiff(gotRev, wantRev); ok {
		return fmt.Sprintf("digest differs at %s: cache mod revision %d, truth %d (%d keys, truth %d)",
			k, gotRev[k], wantRev[k], len(gotRev), len(wantRev))
	}
	if k, ok := watchcheck.StateDiff(got, want); full && ok {
		return fmt.Sprintf("%s: cache %s, truth %s", k, watchcheck.FormatKV(got, k), watchcheck.FormatKV(want, k))
	}
	return ""
}

// judge waits for quiet and runs every check.
func (r *chaosTrial) judge(ctx context.Context, t *testing.T) chaosResult {
	res := chaosResult{recovery: map[string]storage.Recovery{}}
	cc := r.cc
	r.awaitExpiry(ctx)
	rev, err := cc.revision(ctx)
	if err != nil {
		r.violate("", "read the final revision: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, chaosConverge)
	if err := r.rec.waitReached(tctx, rev); err != nil {
		r.violate("", "ground truth: %v", err)
	}
	cancel()
	if err := cc.hashKV(ctx); err != nil {
		r.violate("", "%v", err)
	}
	truth, err := r.rec.snapshot()
	if err != nil {
		r.violate("", "ground truth: %v", err)
	}
	// The truth must be etcd: its fold equals a fresh read.
	resp, err := cc.direct.Get(ctx, r.prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	fresh := map[string]watchcheck.KV{}
	var freshValues []*taggedValue
	values, err := storage.DecodeGetResponse[*taggedValue](resp)
	require.NoError(t, err)
	for _, v := range values {
		fresh[v.Key] = watchcheck.KV{Value: v.Tag, Version: v.Version()}
		freshValues = append(freshValues, v)
	}
	if msg := chaosCacheDiff(truth, freshValues, true); msg != "" {
		r.violate("", "ground truth differs from etcd at revision %d: %s", resp.Header.Revision, msg)
	}

	for i, w := range r.watches {
		op := r.watchOps[i]
		last := int64(0)
		if in := watchcheck.InPrefix(truth, w.prefix); len(in) > 0 {
			last = in[len(in)-1].Revision
		}
		wctx, cancel := context.WithTimeout(ctx, r.converge(w.name))
		for w.delivered() < last && wctx.Err() == nil {
			select { // the watch catches up; poll with the deadline
			case <-wctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		if r.opt.canary != "" && w.name == "w0" {
			res.unmet = r.canaryUnmet(w, storage.WatchEnded(op), truth)
		}
		op.Close()
		h := w.history()
		res.events += len(h.Events)
		res.recovery[w.name] = storage.WatchRecovery(op)
		select {
		case err := <-op.Error():
			r.violate(w.name, "a recoverable fault was reported: %v", err)
		default:
		}
		if got := w.delivered(); got < last {
			r.violate(w.name, "delivered up to revision %d, the ground truth's last change under %s is at %d",
				got, w.prefix, last)
		}
		if err := watchcheck.Watch(h, truth); err != nil {
			r.violate(w.name, "%v", err)
		}
		final := map[string]watchcheck.KV{}
		for k, kv := range fresh {
			if strings.HasPrefix(k, w.prefix) {
				final[k] = kv
			}
		}
		if err := watchcheck.Replay(h, final); err != nil && w.delivered() >= last {
			r.violate(w.name, "%v", err)
		}
		t.Logf("chaos %d: %s (member %d): %d events, %d restarts recorded (%d internal, %d not recordable), recovery %+v",
			r.opt.seed, w.name, w.member, len(h.Events), len(h.Restarts), w.restarts, w.dropped, res.recovery[w.name])
	}
	for _, s := range r.caches {
		sctx, cancel := context.WithTimeout(ctx, r.converge(s.name))
		if msg := r.cacheConverges(sctx, s, true); msg != "" {
			r.violate(s.name, "after quiet: %s", msg)
		}
		cancel()
		select {
		case err := <-s.c.Error():
			r.violate(s.name, "a recoverable fault was reported: %v", err)
		default:
		}
		s.mu.Lock()
		reads := slices.Clone(s.reads)
		s.mu.Unlock()
		if err := watchcheck.CacheMonotonic(reads); err != nil {
			r.violate(s.name, "%v", err)
		}
		res.recovery[s.name] = storage.CacheRecovery(s.c)
		t.Logf("chaos %d: cache %s (member %d): %d reads checked, recovery %+v",
			r.opt.seed, s.name, s.member, len(reads), res.recovery[s.name])
	}
	r.mu.Lock()
	writes := slices.Clone(r.writes)
	r.mu.Unlock()
	for _, msg := range chaosCheckWrites(writes, truth) {
		r.violate("", "%s", msg)
	}
	res.writes = len(writes)
	outcomes := map[string]int{}
	for _, w := range writes {
		outcomes[w.Outcome]++
	}
	t.Logf("chaos %d: writes %v, %d ground-truth events, compacted %d times", r.opt.seed, outcomes, len(truth), len(r.compact))
	r.mu.Lock()
	res.viol = slices.Clone(r.viol)
	r.mu.Unlock()
	return res
}

// awaitExpiry waits, once the writers stopped, until no key holds a value
// written with a TTL: until then etcd still changes (expiries), and the
// judge compares the watches, the caches and etcd at one final state.
func (r *chaosTrial) awaitExpiry(ctx context.Context) {
	r.mu.Lock()
	ttl := map[string]bool{}
	for _, w := range r.writes {
		for _, tag := range w.Tags {
			ttl[tag] = w.TTL
		}
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, chaosConverge)
	defer cancel()
	for {
		rev, err := r.cc.revision(ctx)
		if err == nil {
			err = r.rec.waitReached(ctx, rev)
		}
		if err != nil {
			r.violate("", "waiting for TTL keys to expire: %v", err)
			return
		}
		truth, _ := r.rec.snapshot()
		live := map[string]string{}
		for _, t := range truth {
			live[t.Key] = t.Value // "" after a delete
		}
		n := 0
		for _, tag := range live {
			if ttl[tag] {
				n++
			}
		}
		if n == 0 {
			return
		}
		select { // leases expire by themselves; poll with the deadline
		case <-ctx.Done():
			r.violate("", "%d keys with a TTL still exist %v after the writes stopped", n, chaosConverge)
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// chaosCheckWrites checks the writes against the ground truth: every
// acknowledged put is there at its revision, every acknowledged delete left
// its keys absent at its revision, no definitely failed write left a value,
// no value was written twice or by nobody, and every delete is explained by
// a write or by the expiry of a TTL put.
func chaosCheckWrites(writes []chaosWrite, truth []watchcheck.Truth) []string {
	var msgs []string
	fail := func(format string, args ...any) {
		if len(msgs) < 20 {
			msgs = append(msgs, fmt.Sprintf(format, args...))
		}
	}
	byTag := map[string]watchcheck.Truth{}
	byKey := map[string][]watchcheck.Truth{}
	for _, t := range truth {
		byKey[t.Key] = append(byKey[t.Key], t)
		if t.Type != storage.EventTypePut {
			continue
		}
		if _, dup := byTag[t.Value]; dup {
			fail("value %s written twice (again at %s)", t.Value, watchcheck.FormatTruth(t))
		}
		byTag[t.Value] = t
	}
	absent := func(key string, rev int64) bool {
		var last *watchcheck.Truth
		for i, t := range byKey[key] {
			if t.Revision > rev {
				break
			}
			last = &byKey[key][i]
		}
		return last == nil || last.Type == storage.EventTypeDelete
	}
	writeOf := map[string]chaosWrite{}
	for _, w := range writes {
		for i, tag := range w.Tags {
			writeOf[tag] = w
			t, found := byTag[tag]
			switch {
			case w.Outcome == chaosFailed && found:
				fail("write %d (%s %s) failed with %q, yet %s holds its value", w.ID, w.Kind, w.PutKeys[i], w.Err, watchcheck.FormatTruth(t))
			case w.Outcome == chaosOK && !found:
				fail("acknowledged write %d (%s %s at %d) is not in the ground truth", w.ID, w.Kind, w.PutKeys[i], w.Revision)
			case w.Outcome == chaosOK && (t.Key != w.PutKeys[i] || t.Revision != w.Revision):
				fail("acknowledged write %d (%s %s at %d) is in the ground truth as %s", w.ID, w.Kind, w.PutKeys[i], w.Revision, watchcheck.FormatTruth(t))
			}
		}
		if w.Outcome != chaosOK {
			continue
		}
		for _, k := range w.DelKeys {
			if w.DelValue && !slices.ContainsFunc(byKey[k], func(t watchcheck.Truth) bool {
				return t.Revision == w.Revision && t.Type == storage.EventTypeDelete
			}) {
				fail("acknowledged write %d (%s %s at %d) has no delete in the ground truth", w.ID, w.Kind, k, w.Revision)
			}
			if !absent(k, w.Revision) {
				fail("acknowledged write %d (%s %s at %d): the key exists at that revision", w.ID, w.Kind, k, w.Revision)
			}
		}
		if w.DelPrefix != "" {
			for k := range byKey {
				if strings.HasPrefix(k, w.DelPrefix) && !absent(k, w.Revision) {
					fail("acknowledged write %d (%s %s at %d): %s exists at that revision", w.ID, w.Kind, w.DelPrefix, w.Revision, k)
				}
			}
		}
	}
	deletes := func(w chaosWrite, key string) bool {
		return slices.Contains(w.DelKeys, key) || (w.DelPrefix != "" && strings.HasPrefix(key, w.DelPrefix))
	}
	for key, events := range byKey {
		for i, t := range events {
			if t.Type == storage.EventTypePut {
				if _, ok := writeOf[t.Value]; !ok {
					fail("%s holds %q, which no write wrote", watchcheck.FormatTruth(t), t.Value)
				}
				continue
			}
			if i > 0 && writeOf[events[i-1].Value].TTL {
				continue // expired with its lease (or deleted: either is fine)
			}
			if !slices.ContainsFunc(writes, func(w chaosWrite) bool {
				return deletes(w, key) && (w.Outcome == chaosUnknown || w.Outcome == chaosOK && w.Revision == t.Revision)
			}) {
				fail("%s: no write deleted it and it had no TTL", watchcheck.FormatTruth(t))
			}
		}
	}
	return msgs
}

// dump writes the run's logs for a failure and returns the folder.
func (r *chaosTrial) dump(t *testing.T) string {
	truth, _ := r.rec.snapshot()
	r.mu.Lock()
	files := map[string][]any{
		"writes":     chaosLines(r.writes),
		"faults":     chaosLines(r.faults),
		"violations": chaosLines(r.viol),
		"truth":      chaosLines(truth),
		"compacted":  chaosLines(r.compact),
	}
	r.mu.Unlock()
	for _, w := range r.watches {
		h := w.history()
		files["watch-"+w.name] = chaosLines(h.Events)
		files["watch-"+w.name+"-restarts"] = append([]any{map[string]any{"prefix": h.Prefix, "read_rev": h.ReadRev}},
			chaosLines(h.Restarts)...)
	}
	for _, s := range r.caches {
		s.mu.Lock()
		files["cache-"+s.name+"-reads"] = chaosLines(s.reads)
		s.mu.Unlock()
	}
	dir, err := chaosDump(r.opt.seed, files)
	if err != nil {
		t.Logf("chaos %d: writing the logs: %v", r.opt.seed, err)
	}
	return dir
}
