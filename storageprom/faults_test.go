package storageprom_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
)

// TestSeriesAndLogsThroughAMemberRestartAndACompaction runs ops, a watch
// through a partition (a resume of the library's own), a member restart and
// a compaction while away (a re-read), and a cache, then checks every series
// with its exact count where the count is known, and the watch's log lines.
func TestSeriesAndLogsThroughAMemberRestartAndACompaction(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3, WatchProgressNotifyInterval: 100 * time.Millisecond})
	ctx := testContext(t)
	reg := freshRegistry(t)
	writer := clus.Client(1)
	member := clus.Members[0]
	var others []*integration.Member
	endpoints := []string{member.GRPCURL}
	for _, m := range clus.Members[1:] {
		others = append(others, m)
		endpoints = append(endpoints, m.GRPCURL)
	}
	// rawPut writes through clientv3, which the series do not count,
	// retrying while the cluster elects a leader.
	rawPut := func(key, val string) (rev int64) {
		t.Helper()
		require.Eventually(t, func() bool {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			resp, err := writer.Put(pctx, key, val)
			if err == nil {
				rev = resp.Header.Revision
			}
			return err == nil
		}, waitTimeout, 50*time.Millisecond, "put %s", key)
		return rev
	}
	writeSeq := func(from, to int) (rev int64) {
		for i := from; i <= to; i++ {
			rev = rawPut(fmt.Sprintf("/w/%03d", i), fmt.Sprintf(`{"name":"%03d"}`, i))
		}
		return rev
	}

	t.Log("phase 1: 10 puts (2 with a TTL, sharing a lease), 3 failed creates, a get of undecodable bytes")
	for i := range 10 {
		op := storage.NewPutOp(writer, fmt.Sprintf("/ops/%d", i), &host{Name: "p"})
		if i < 2 {
			op = op.WithTTL(30 * time.Second)
		}
		require.NoError(t, op.Exec(ctx))
	}
	for i := range 3 {
		err := storage.NewCreateOp(writer, fmt.Sprintf("/ops/%d", i), &host{Name: "c"}).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrAlreadyExists)
	}
	rawPut("/bad/x", "{")
	_, err := storage.NewGetOp[*host](writer, "/bad/x").Exec(ctx)
	require.Error(t, err)

	t.Log("phase 2: a watch through member 0 only, logging into an observer; a cache through member 1")
	core, logs := observer.New(zapcore.DebugLevel)
	watchClient, err := integration.NewClient(t, clientv3.Config{Endpoints: []string{member.GRPCURL},
		DialTimeout: 5 * time.Second, Logger: zap.New(core)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = watchClient.Close() })
	var handled atomic.Int64 // handler calls of every watch of the test
	var last atomic.Int64    // the last sequence number the main watch saw
	w := storage.NewWatchPrefixOp[*host](watchClient, "/w/")
	require.NoError(t, w.Watch(ctx, func(e *storage.Event[*host]) error {
		handled.Add(1)
		if e.Type == storage.EventTypePut {
			var n int64
			_, _ = fmt.Sscanf(e.Value.Name, "%d", &n)
			last.Store(max(last.Load(), n))
		}
		return nil
	}))
	t.Cleanup(w.Close)
	cache := storage.NewCache(writer, "/w/", func(h *host) string { return "/w/" + h.Name })
	require.NoError(t, cache.Start(ctx))
	t.Cleanup(cache.Stop)
	writeSeq(1, 10)
	seen := func(n int64) func() bool { return func() bool { return last.Load() >= n } }
	require.Eventually(t, seen(10), waitTimeout, 5*time.Millisecond)

	t.Log("phase 3: the watch's client goes nowhere; member 0 restarts; writes and a compaction meanwhile")
	// Stopping member 0 ends the stream; pointing the client nowhere keeps
	// it from resuming before member 0 has applied the compaction (see the
	// root package's TestFaultWatchAndCacheCatchUpAfterACompactionWhileAway).
	watchClient.SetEndpoints("unix://localhost:storageprom-nowhere")
	member.Stop(t)
	compactRev := writeSeq(11, 20)
	require.Eventually(t, func() bool {
		_, err := writer.Compact(ctx, compactRev, clientv3.WithCompactPhysical())
		return err == nil || errors.Is(err, rpctypes.ErrCompacted)
	}, waitTimeout, 50*time.Millisecond)
	require.NoError(t, member.Restart(t))
	require.Eventually(t, func() bool { return member.Server.KV().FirstRev() >= compactRev },
		waitTimeout, 10*time.Millisecond, "member 0 should apply the compaction at %d", compactRev)
	watchClient.SetEndpoints(member.GRPCURL)
	require.Eventually(t, seen(20), waitTimeout, 5*time.Millisecond)
	require.Positive(t, gather(t, reg, "storage_watch_restarts_total")["reason=relist"])

	t.Log("phase 4: partition member 0: it ends the watch with ErrNoLeader, and the library resumes it elsewhere")
	watchClient.SetEndpoints(endpoints...) // the stream stays on member 0
	member.InjectPartition(t, others...)
	writeSeq(21, 30)
	require.Eventually(t, seen(30), waitTimeout, 5*time.Millisecond)
	// Writes member 0 took before it noticed the partition may arrive
	// before the resume.
	require.Eventually(t, func() bool { return gather(t, reg, "storage_watch_restarts_total")["reason=resume"] > 0 },
		waitTimeout, 5*time.Millisecond, "member 0 ended the watch with ErrNoLeader: the library must resume it")
	member.RecoverPartition(t, others...)
	clus.WaitLeader(t)

	t.Log("phase 5: the cache holds etcd's keys; a handler error and an ended context stop two more watches")
	resp, err := writer.Get(ctx, "/w/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.NoError(t, cache.WaitForRevision(ctx, resp.Header.Revision))
	require.Equal(t, series{"prefix=/w/": float64(resp.Count)}, gather(t, reg, "storage_cache_items"),
		"cache items equal etcd's key count")
	require.GreaterOrEqual(t, gather(t, reg, "storage_cache_revision")["prefix=/w/"], float64(resp.Header.Revision))

	failing := storage.NewWatchPrefixOp[*host](writer, "/w/")
	require.NoError(t, failing.Watch(ctx, func(e *storage.Event[*host]) error {
		handled.Add(1)
		if e.Key == "/w/031" {
			return errors.New("handler refuses")
		}
		return nil
	}))
	t.Cleanup(failing.Close)
	wctx, cancel := context.WithCancel(ctx)
	ended := storage.NewWatchPrefixOp[*host](writer, "/w/")
	require.NoError(t, ended.Watch(wctx, func(*storage.Event[*host]) error { handled.Add(1); return nil }))
	t.Cleanup(ended.Close)
	writeSeq(31, 31)
	<-failing.Error()
	require.Eventually(t, seen(31), waitTimeout, 5*time.Millisecond)
	cancel()
	<-ended.Error()
	w.Close()
	cache.Stop()

	t.Log("phase 6: every series")
	require.Equal(t, series{"op=put,outcome=ok": 10, "op=create,outcome=already_exists": 3, "op=get,outcome=error": 1},
		gather(t, reg, "storage_operations_total"))
	require.Equal(t, series{"op=put": 10, "op=create": 3, "op=get": 1}, gather(t, reg, "storage_operation_duration_seconds"))
	events := gather(t, reg, "storage_watch_events_total")
	require.Equal(t, float64(handled.Load()), events["source=watch"], "every handler call, no other")
	assert.Positive(t, events["source=cache"], "the cache applied the live writes")
	assert.LessOrEqual(t, events["source=cache"], 31.0, "one event per write at most")
	restarts := gather(t, reg, "storage_watch_restarts_total")
	require.GreaterOrEqual(t, restarts["reason=resume"], 1.0)
	require.GreaterOrEqual(t, restarts["reason=relist"], 1.0)
	require.Zero(t, restarts["reason=backlog"], "no handler lagged")
	require.Equal(t, series{"reason=closed": 2, "reason=handler": 1, "reason=context": 1, "reason=client_closed": 0,
		"reason=auth": 0, "reason=other": 0}, gather(t, reg, "storage_watch_stopped_total"))
	require.Positive(t, gather(t, reg, "storage_watch_handler_queue_seconds")[""])
	require.Equal(t, series{"": 1}, gather(t, reg, "storage_decode_errors_total"))
	require.Empty(t, gather(t, reg, "storage_cache_items"), "a stopped cache has no series")
	require.Empty(t, gather(t, reg, "storage_cache_revision"))
	require.Equal(t, series{"": 1}, gather(t, reg, "storage_lease_grants_total"))
	require.Equal(t, 1.0, gather(t, reg, "storage_leases")["ttl_seconds=31"], "ceil(30 s + 0.5 s)")

	t.Log("phase 7: the logs of the watch's client")
	resumed := logs.FilterMessage("storage: watch resumes after a failure").All()
	require.NotEmpty(t, resumed, "the resume after ErrNoLeader")
	requireLogged(t, resumed[0], zapcore.DebugLevel, 20, "no leader")
	reread := logs.FilterMessage("storage: watch re-reads: etcd compacted past its revision").All()
	require.NotEmpty(t, reread)
	requireLogged(t, reread[0], zapcore.InfoLevel, 10, "compacted")
	require.Empty(t, logs.FilterMessage("storage: watch stopped").All(), "the watch of this client was closed")
}

// requireLogged checks a watch's log line: its level, the prefix, a revision
// at or above minRev and a cause that mentions cause.
func requireLogged(t *testing.T, e observer.LoggedEntry, level zapcore.Level, minRev int64, cause string) {
	t.Helper()
	fields := e.ContextMap()
	require.Equal(t, level, e.Level, "%s", e.Message)
	require.Equal(t, "/w/", fields["prefix"], "%s", e.Message)
	require.GreaterOrEqual(t, fields["revision"], minRev, "%s", e.Message)
	errText, _ := fields["error"].(string)
	require.True(t, strings.Contains(errText, cause), "%s: cause %q", e.Message, errText)
}
