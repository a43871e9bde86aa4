package storageprom_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storageprom"
	"github.com/etcdkit/storage/storagetest"
)

func TestRegisterTwiceOnOneRegistryFailsAndOnTwoRegistriesEachCounts(t *testing.T) {
	client := storagetest.New(t)
	ctx := testContext(t)
	first, second := freshRegistry(t), freshRegistry(t)

	err := storageprom.Register(first)
	var already prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &already, "a second Register on one registry")

	require.NoError(t, storage.NewPutOp(client, "/reg/a", &host{Name: "a"}).Exec(ctx))
	for _, reg := range []*prometheus.Registry{first, second} {
		require.Equal(t, series{"op=put,outcome=ok": 1}, gather(t, reg, "storage_operations_total"),
			"each registry counts the put once")
	}
}

func TestOperationsCountByOpAndOutcome(t *testing.T) {
	client := storagetest.New(t)
	ctx := testContext(t)
	_, err := client.Put(ctx, "/ops/a", `{"name":"a"}`)
	require.NoError(t, err)
	_, err = client.Put(ctx, "/ops/bad", `{`)
	require.NoError(t, err)
	cache := storage.NewCache(client, "/ops/", func(h *host) string { return "/ops/" + h.Name })
	require.NoError(t, cache.Start(ctx))
	t.Cleanup(cache.Stop)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	stale := &host{Name: "a"}
	stale.SetVersion(7)

	cases := []struct {
		name string
		run  func() error
		want string // the one op=...,outcome=... counted
	}{
		{"put", func() error { return storage.NewPutOp(client, "/ops/p", &host{}).Exec(ctx) }, "op=put,outcome=ok"},
		{"create of an existing key", func() error { return storage.NewCreateOp(client, "/ops/a", &host{}).Exec(ctx) },
			"op=create,outcome=already_exists"},
		{"update with a stale version", func() error { return storage.NewUpdateOp(client, "/ops/a", stale).Exec(ctx) },
			"op=update,outcome=version_mismatch"},
		{"put with a TTL no lease can carry", func() error {
			return storage.NewPutOp(client, "/ops/p", &host{}).WithTTL(-time.Second).Exec(ctx)
		}, "op=put,outcome=invalid"},
		{"put with an option that does not fit", func() error {
			return storage.NewPutOp(client, "/ops/p", &host{}, clientv3.WithRev(3)).Exec(ctx)
		}, "op=put,outcome=invalid"},
		{"put of a nil value", func() error { return storage.NewPutOp[*host](client, "/ops/p", nil).Exec(ctx) },
			"op=put,outcome=invalid"},
		{"get of a missing key", func() error { _, err := storage.NewGetOp[*host](client, "/ops/none").Exec(ctx); return err },
			"op=get,outcome=not_found"},
		{"get of undecodable bytes", func() error { _, err := storage.NewGetOp[*host](client, "/ops/bad").Exec(ctx); return err },
			"op=get,outcome=error"},
		{"get with an ended context", func() error { _, err := storage.NewGetOp[*host](client, "/ops/a").Exec(cancelled); return err },
			"op=get,outcome=error"},
		{"get multiple", func() error {
			_, err := storage.NewGetMultipleOp[*host](client, []string{"/ops/a"}).Exec(ctx)
			return err
		}, "op=get_multiple,outcome=ok"},
		{"get prefix", func() error { _, err := storage.NewGetPrefixOp[*host](client, "/none/").Exec(ctx); return err },
			"op=get_prefix,outcome=ok"},
		{"get range", func() error { _, err := storage.NewGetRangeOp[*host](client, "/n", "/o").Exec(ctx); return err },
			"op=get_range,outcome=ok"},
		{"exists", func() error { _, err := storage.NewExistsOp(client, "/ops/a").Exec(ctx); return err },
			"op=exists,outcome=ok"},
		{"delete key", func() error { _, err := storage.NewDeleteKeyOp(client, "/ops/none").Exec(ctx); return err },
			"op=delete_key,outcome=ok"},
		{"delete value with a stale version", func() error { return storage.NewDeleteValueOp(client, "/ops/a", stale).Exec(ctx) },
			"op=delete_value,outcome=version_mismatch"},
		{"delete prefix of the whole keyspace", func() error { _, err := storage.NewDeletePrefixOp(client, "").Exec(ctx); return err },
			"op=delete_prefix,outcome=invalid"},
		{"txn whose create fails counts once, as constraint_violated", func() error {
			return storage.NewTxn(client, storage.NewPutOp(client, "/ops/t", &host{}),
				storage.NewCreateOp(client, "/ops/a", &host{})).Commit(ctx)
		}, "op=txn,outcome=constraint_violated"},
		{"txn with two ops on one key", func() error {
			return storage.NewTxn(client, storage.NewPutOp(client, "/ops/t", &host{}),
				storage.NewPutOp(client, "/ops/t", &host{})).Commit(ctx)
		}, "op=txn,outcome=duplicate_keys"},
		{"txn", func() error {
			return storage.NewTxn(client, cache.Put(&host{Name: "t"}), storage.NewDeleteKeyOp(client, "/ops/p")).Commit(ctx)
		}, "op=txn,outcome=ok"},
		{"cache get counts as get", func() error { _, err := cache.Get("/ops/a").Exec(ctx); return err }, "op=get,outcome=ok"},
		{"cache get of a missing key", func() error { _, err := cache.Get("/ops/none").Exec(ctx); return err },
			"op=get,outcome=not_found"},
		{"cache get prefix counts as get_prefix", func() error { _, err := cache.GetPrefix("/ops/a/").Exec(ctx); return err },
			"op=get_prefix,outcome=ok"},
		{"cache get prefix outside the cache", func() error { _, err := cache.GetPrefix("/x/").Exec(ctx); return err },
			"op=get_prefix,outcome=invalid"},
		{"cache put counts as put", func() error { return cache.Put(&host{Name: "c"}).Exec(ctx) }, "op=put,outcome=ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := freshRegistry(t)
			_ = tc.run()
			require.Equal(t, series{tc.want: 1}, gather(t, reg, "storage_operations_total"))
			op, _, _ := strings.Cut(tc.want, ",")
			require.Equal(t, series{op: 1}, gather(t, reg, "storage_operation_duration_seconds"))
		})
	}
}

func TestCacheGaugesAddUpTheCachesOfAPrefixAndGoWithStop(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	client := storagetest.New(t)
	ctx := testContext(t)
	reg := freshRegistry(t)
	keyOf := func(h *host) string { return "/g/" + h.Name }
	for _, name := range []string{"a", "b", "c"} {
		_, err := client.Put(ctx, "/g/"+name, `{"name":"`+name+`"}`)
		require.NoError(t, err)
	}

	first := storage.NewCache(client, "/g/", keyOf)
	require.NoError(t, first.Start(ctx))
	t.Cleanup(first.Stop)
	require.Equal(t, series{"prefix=/g/": 3}, gather(t, reg, "storage_cache_items"))
	require.Equal(t, series{"prefix=/g/": float64(first.Revision())}, gather(t, reg, "storage_cache_revision"))

	t.Log("a second cache of the prefix: items add up")
	_, err := client.Put(ctx, "/g/d", `{"name":"d"}`)
	require.NoError(t, err)
	require.NoError(t, first.Sync(ctx))
	second := storage.NewCache(client, "/g/", keyOf)
	require.NoError(t, second.Start(ctx))
	t.Cleanup(second.Stop)
	require.NoError(t, second.Sync(ctx))
	require.Equal(t, series{"prefix=/g/": 8}, gather(t, reg, "storage_cache_items"))
	require.Equal(t, first.Revision(), second.Revision())
	require.Equal(t, series{"prefix=/g/": float64(first.Revision())}, gather(t, reg, "storage_cache_revision"))

	t.Log("stop the first: the second's series remain; stop the second: none remains")
	first.Stop()
	require.Equal(t, series{"prefix=/g/": 4}, gather(t, reg, "storage_cache_items"))
	second.Stop()
	require.Empty(t, gather(t, reg, "storage_cache_items"))
	require.Empty(t, gather(t, reg, "storage_cache_revision"))
	require.Equal(t, series{"reason=closed": 2}, gather(t, reg, "storage_watch_stopped_total").nonZero(),
		"both caches were running when stopped")
}

func TestWatchStoppedCountsWhyEachRunEnded(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	client := storagetest.New(t)
	ctx := testContext(t)
	reg := freshRegistry(t)
	want := series{}
	wait := func(reason string) {
		t.Helper()
		want["reason="+reason]++
		require.Eventually(t, func() bool {
			return gather(t, reg, "storage_watch_stopped_total")["reason="+reason] == want["reason="+reason]
		}, waitTimeout, 5*time.Millisecond)
	}

	t.Log("a handler error stops a run")
	w := storage.NewWatchPrefixOp[*host](client, "/s/")
	require.NoError(t, w.Watch(ctx, func(*storage.Event[*host]) error { return errors.New("no") }))
	_, err := client.Put(ctx, "/s/a", `{}`)
	require.NoError(t, err)
	<-w.Error()
	wait("handler")
	w.Close() // the run had stopped: Close ends nothing running

	t.Log("the end of the watch's context stops it")
	wctx, cancel := context.WithCancel(ctx)
	require.NoError(t, w.Watch(wctx, func(*storage.Event[*host]) error { return nil }))
	cancel()
	<-w.Error()
	wait("context")
	w.Close()

	t.Log("Close stops a running watch")
	require.NoError(t, w.Watch(ctx, func(*storage.Event[*host]) error { return nil }))
	w.Close()
	wait("closed")

	t.Log("a closed client stops it")
	other := storagetest.New(t)
	require.NoError(t, w.Watch(ctx, func(*storage.Event[*host]) error { return nil }))
	wo := storage.NewWatchPrefixOp[*host](other, "/s/")
	require.NoError(t, wo.Watch(ctx, func(*storage.Event[*host]) error { return nil }))
	require.NoError(t, other.Close())
	<-wo.Error()
	wait("client_closed")
	wo.Close()
	w.Close()
	wait("closed")

	t.Log("a cache subscription counts as a watch: a handler error, then Stop of its cache")
	c := storage.NewCache(client, "/s/", func(h *host) string { return "/s/" + h.Name })
	require.NoError(t, c.Start(ctx))
	sub := c.Watch("")
	require.NoError(t, sub.Watch(ctx, func(e *storage.Event[*host]) error {
		if e.Key == "/s/b" {
			return errors.New("no")
		}
		return nil
	}))
	_, err = client.Put(ctx, "/s/b", `{}`)
	require.NoError(t, err)
	<-sub.Error()
	wait("handler")
	sub.Close() // the run had stopped: Close ends nothing running
	require.NoError(t, sub.Watch(ctx, func(*storage.Event[*host]) error { return nil }))
	c.Stop() // ends the cache's watch and the subscription: both by their owner
	want["reason=closed"]++
	wait("closed")
	sub.Close()

	t.Log("the end of the cache's context ends the cache and its subscription: both count as context")
	cctx, cancelCache := context.WithCancel(ctx)
	require.NoError(t, c.Start(cctx))
	require.NoError(t, sub.Watch(ctx, func(*storage.Event[*host]) error { return nil }))
	cancelCache()
	<-sub.Error()
	want["reason=context"]++
	wait("context")
	sub.Close()
	c.Stop()

	require.Equal(t, want, gather(t, reg, "storage_watch_stopped_total").nonZero())
}

func TestSharedLeasesCountGrantsAndCurrentLeases(t *testing.T) {
	client := storagetest.New(t)
	ctx := testContext(t)
	reg := freshRegistry(t)
	for i := range 3 {
		require.NoError(t, storage.NewPutOp(client, "/l/k", &host{}).WithTTL(time.Minute).Exec(ctx), "put %d", i)
	}
	require.Equal(t, series{"": 1}, gather(t, reg, "storage_lease_grants_total"), "three puts share one lease")
	require.Equal(t, 1.0, gather(t, reg, "storage_leases")["ttl_seconds=61"], "ceil(60 s + 0.5 s)")
}

func TestCacheGaugeOfAPrefixThatIsNotUTF8FailsTheScrapeWithoutAPanic(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	client := storagetest.New(t)
	ctx := testContext(t)
	reg := freshRegistry(t)
	const prefix = "/bin\xff/" // etcd keys are bytes; Prometheus labels are UTF-8
	_, err := client.Put(ctx, prefix+"a", `{"name":"a"}`)
	require.NoError(t, err)
	c := storage.NewCache(client, prefix, func(h *host) string { return prefix + h.Name })
	require.NoError(t, c.Start(ctx))
	t.Cleanup(c.Stop)

	_, err = reg.Gather()
	require.ErrorContains(t, err, "storage_cache_items", "the invalid label is reported, naming its series")
	require.ErrorContains(t, err, "UTF-8")
}
