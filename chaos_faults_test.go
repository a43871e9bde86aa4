//go:build storage_testhooks

package storage_test

// The chaos test's faults (chaos_test.go): each is injected on one member
// and healed before inject returns, while the workload writes on.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// chaosFaults are the faults a run picks from.
var chaosFaults = []string{"kill-leader", "kill-watched", "drop", "blackhole", "partition", "pause", "compact", "burst"}

// inject applies one fault and heals it before returning; writes go on.
func (r *chaosTrial) inject(ctx context.Context, t *testing.T, fault string) {
	cc := r.cc
	clus := cc.clus
	member := r.rng.IntN(len(clus.Members))
	if r.opt.canary != "" {
		member = 0 // the broken subjects' member
	}
	t.Logf("chaos %d: phase 2: %s", r.opt.seed, fault)
	hold := time.Duration(1000+r.rng.IntN(1000)) * time.Millisecond
	switch fault {
	case "kill-leader", "kill-watched":
		if fault == "kill-leader" {
			member = clus.WaitLeader(t)
		}
		require.Equal(t, -1, cc.down, "one member down at a time")
		require.NotEqual(t, member, cc.holed, "a blackholed member is not stopped")
		r.fault(fault, member, "stop")
		clus.Members[member].Stop(t)
		cc.down = member
		time.Sleep(hold) // the member stays down while writes go on
		require.NoError(t, clus.Members[member].Restart(t))
		cc.down = -1
		clus.WaitLeader(t)
		r.fault(fault, member, "restarted")
	case "drop":
		require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
		r.fault(fault, member, "start")
		for range 3 {
			clus.Members[member].Bridge().DropConnections()
			time.Sleep(hold / 3)
		}
		r.fault(fault, member, "end")
	case "blackhole":
		require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
		require.Equal(t, -1, cc.holed, "Blackhole twice panics")
		r.fault(fault, member, "blackhole")
		clus.Members[member].Bridge().Blackhole()
		cc.holed = member
		time.Sleep(hold)
		clus.Members[member].Bridge().Unblackhole()
		cc.holed = -1
		r.fault(fault, member, "unblackhole")
	case "partition", "burst":
		others := cc.others(member)
		r.fault(fault, member, "partition")
		watched := r.watchOps[member] // w0, w1, w2 are pinned to members 0, 1, 2
		resumed := storage.WatchRecovery(watched).Resumes
		clus.Members[member].InjectPartition(t, others...)
		if fault == "burst" {
			r.burst(ctx, 1200, member)
		}
		time.Sleep(hold)
		// The partition exercises the library only once the member ended
		// the watch pinned to it (ErrNoLeader) and the library took over:
		// a slow machine takes longer to notice, so hold until it did.
		if !r.waitFor(ctx, func() bool {
			return storage.WatchRecovery(watched).Resumes > resumed || storage.WatchEnded(watched)
		}) {
			t.Logf("chaos %d: %s did not restart within %v of the partition", r.opt.seed, r.watches[member].name, chaosConverge)
		}
		if fault == "burst" {
			// Over a thousand revisions while cut off. The member's
			// clients are kept away (blackholed) until it has applied
			// them: a watch resumed on a member still catching up is
			// among its synced watchers and gets each revision as it is
			// applied, while one resumed afterwards is caught up in
			// batches of up to 1000 revisions whose header runs ahead of
			// their events, and bounded backlogs cancel and resume.
			require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
			require.Equal(t, -1, cc.holed, "Blackhole twice panics")
			clus.Members[member].Bridge().Blackhole()
			cc.holed = member
			clus.Members[member].RecoverPartition(t, others...)
			clus.WaitLeader(t)
			r.fault(fault, member, "recovered, clients blackholed")
			if !r.waitFor(ctx, func() bool {
				rev, err := cc.revision(ctx)
				return err == nil && clus.Members[member].Server.KV().Rev() >= rev
			}) {
				t.Logf("chaos %d: member %d did not catch up within %v", r.opt.seed, member, chaosConverge)
			}
			clus.Members[member].Bridge().Unblackhole()
			cc.holed = -1
			r.fault(fault, member, "caught up, unblackholed")
			break
		}
		clus.Members[member].RecoverPartition(t, others...)
		clus.WaitLeader(t)
		r.fault(fault, member, "recovered")
	case "pause":
		r.fault(fault, member, "pause")
		clus.Members[member].Pause()
		time.Sleep(hold)
		clus.Members[member].Resume()
		clus.WaitLeader(t)
		r.fault(fault, member, "resume")
	case "compact":
		// Compaction every 100-200 ms while a member is cut off from its
		// client (blackholed), so the watches there resume past it.
		require.NotEqual(t, member, cc.down, "no Bridge() on a stopped member")
		cctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); r.compactor(cctx) }()
		r.fault(fault, member, "blackhole+compact")
		clus.Members[member].Bridge().Blackhole()
		cc.holed = member
		time.Sleep(hold)
		clus.Members[member].Bridge().Unblackhole()
		cc.holed = -1
		time.Sleep(hold / 2)
		stop()
		wg.Wait()
		r.fault(fault, member, "unblackhole, compactor stopped")
	default:
		t.Fatalf("unknown fault %q", fault)
	}
}

// compactor compacts to the newest revision the ground truth has received,
// every 100-200 ms, until ctx ends.
func (r *chaosTrial) compactor(ctx context.Context) {
	rng := rand.New(rand.NewPCG(r.opt.seed, 2)) //nolint:gosec // a seeded test schedule
	var done int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(100+rng.IntN(100)) * time.Millisecond):
		}
		rev := r.rec.compactable()
		if rev <= done {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
		_, err := r.cc.direct.Compact(cctx, rev, clientv3.WithCompactPhysical())
		cancel()
		if err == nil {
			done = rev
			r.mu.Lock()
			r.compact = append(r.compact, rev)
			r.mu.Unlock()
		}
	}
}

// burst writes n puts as fast as 16 goroutines can, through the members
// other than cut (clients of a cut-off member would only time out).
func (r *chaosTrial) burst(ctx context.Context, n, cut int) {
	round := r.bursts.Add(1) // tags stay unique when a run bursts twice
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		client := r.cc.clus.Client((cut + 1 + g%2) % len(r.cc.clus.Members))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n) && ctx.Err() == nil; i = next.Add(1) {
				key := fmt.Sprintf("%sburst/%d", r.prefix, i%100)
				tag := fmt.Sprintf("burst.%d.%d", round, i)
				r.exec(ctx, chaosWrite{Writer: "burst", Kind: "put", PutKeys: []string{key}, Tags: []string{tag}},
					func(ctx context.Context) (int64, error) {
						op := storage.NewPutOp(client, key, &taggedValue{Key: key, Tag: tag})
						err := op.Exec(ctx)
						return op.Revision(), err
					})
			}
		}()
	}
	wg.Wait()
}
