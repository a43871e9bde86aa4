package storage_test

// How a watch run stops and reports it: a handler error, a cancelled
// context, a closed client, invalid options, PropagateErrors.

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestWatchHandlerErrorStopsTheRunAndIsReportedOnce(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	errBoom := errors.New("boom")
	op := storage.NewWatchPrefixOp[*host](c, "/w")
	t.Cleanup(op.Close)
	rec := newEventQueue()
	require.NoError(t, op.Watch(ctx, func(e *storage.Event[*host]) error {
		rec.c <- *e
		if e.Key == "/w/fail" {
			return errBoom
		}
		return nil
	}))

	txnRev(t, c, clientv3.OpPut("/w/fail", hostNamedJSON("f")), clientv3.OpPut("/w/same-txn", hostNamedJSON("x")))
	require.Equal(t, "/w/fail", rec.next(t).Key)
	err := recvValue(t, op.Error())
	require.ErrorIs(t, err, errBoom)
	require.ErrorContains(t, err, "watch prefix /w/")

	putNamed(t, c, "/w/after", "after")
	rec.requireQuiet(t) // the handler is not called again
	require.Empty(t, op.Error(), "a second error")

	require.ErrorIs(t, op.Watch(ctx, rec.handle), storage.ErrWatchAlreadyInProgress, "a stopped run is in progress until Close")
	op.Close()
	require.NoError(t, op.Watch(ctx, rec.handle))
	require.Equal(t, []string{"/w/after", "/w/fail", "/w/same-txn"}, eventKeys(rec.take(t, 3)))
}

func TestWatchHandlerErrorDuringTheInitialReadIsReturnedAndNothingRuns(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	putNamed(t, c, "/w/a", "a")
	putNamed(t, c, "/w/b", "b")
	errBoom := errors.New("boom")
	op := storage.NewWatchPrefixOp[*host](c, "/w")
	t.Cleanup(op.Close)

	calls := 0
	err := op.Watch(ctx, func(*storage.Event[*host]) error { calls++; return errBoom })
	require.ErrorIs(t, err, errBoom)
	require.ErrorContains(t, err, "watch prefix /w/")
	require.Equal(t, 1, calls, "handle called after it failed")
	require.Empty(t, op.Error(), "the returned error was also sent on Error()")

	rec := newEventQueue()
	require.NoError(t, op.Watch(ctx, rec.handle), "Watch after a failed Watch, without Close")
	require.Equal(t, []string{"/w/a", "/w/b"}, eventKeys(rec.take(t, 2)))
}

func TestWatchContextCancelStopsTheRunWithCanceled(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	op := storage.NewWatchPrefixOp[*host](c, "/w")
	t.Cleanup(op.Close)
	rec := newEventQueue()
	ctx, cancel := context.WithCancel(testContext(t))
	require.NoError(t, op.Watch(ctx, rec.handle))

	cancel()
	err := recvValue(t, op.Error())
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "watch prefix /w/")

	putNamed(t, c, "/w/a", "a")
	rec.requireQuiet(t)
	require.Empty(t, op.Error(), "a second error")
	require.ErrorIs(t, op.Watch(testContext(t), rec.handle), storage.ErrWatchAlreadyInProgress)
}

func TestWatchCloseDropsAnUnreadError(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	op := storage.NewWatchPrefixOp[*host](c, "/w")
	t.Cleanup(op.Close)
	require.NoError(t, op.Watch(testContext(t), func(*storage.Event[*host]) error { return errors.New("boom") }))

	putNamed(t, c, "/w/a", "a")
	require.Eventually(t, func() bool { return len(op.Error()) == 1 }, waitTimeout, 5*time.Millisecond)
	op.Close()
	require.Empty(t, op.Error())
}

func TestWatchPropagateErrorsForwardsUntilItsContextEnds(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	errBoom := errors.New("boom")
	failing := func(e *storage.Event[*host]) error {
		if e.Key == "/w/fail" {
			return errBoom
		}
		return nil
	}
	op := storage.NewWatchPrefixOp[*host](c, "/w")
	t.Cleanup(op.Close)
	require.NoError(t, op.Watch(ctx, failing))

	beforePropagate := goleak.IgnoreCurrent()
	forwarded := make(chan error, 1)
	pctx, pcancel := context.WithCancel(ctx)
	op.PropagateErrors(pctx, forwarded)

	putNamed(t, c, "/w/fail", "f")
	require.ErrorIs(t, recvValue(t, forwarded), errBoom)

	pcancel()
	// Its goroutine is the only one started since; it must end with pctx.
	require.NoError(t, goleak.Find(beforePropagate), "PropagateErrors outlived its context")

	op.Close()
	deleteRev(t, c, "/w/fail")
	require.NoError(t, op.Watch(ctx, failing))
	putNamed(t, c, "/w/fail", "f")
	require.ErrorIs(t, recvValue(t, op.Error()), errBoom, "the error of a later run stays on Error()")
	require.Empty(t, forwarded)
}

func TestWatchInvalidOptionsAreAnErrorNamingTheWatch(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)

	options := []struct {
		name string
		opt  clientv3.OpOption
	}{
		{"WithRev", clientv3.WithRev(5)},
		{"WithPrefix", clientv3.WithPrefix()},
		{"WithFromKey", clientv3.WithFromKey()},
		{"WithRange", clientv3.WithRange("/z")},
		{"WithLimit", clientv3.WithLimit(1)},
		{"WithSerializable", clientv3.WithSerializable()},
		{"WithLease", clientv3.WithLease(1)},
		{"WithSort", clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)},
		{"WithCountOnly", clientv3.WithCountOnly()},
		{"WithKeysOnly", clientv3.WithKeysOnly()},
		{"WithMinModRev", clientv3.WithMinModRev(1)},
	}
	ops := []struct {
		kind  string
		newOp func(opt clientv3.OpOption) storage.WatchOp[*host]
		what  string
	}{{
		kind: "key",
		newOp: func(opt clientv3.OpOption) storage.WatchOp[*host] {
			return storage.NewWatchOp[*host](c, "/w/k", opt)
		},
		what: "watch /w/k",
	}, {
		kind: "prefix",
		newOp: func(opt clientv3.OpOption) storage.WatchOp[*host] {
			return storage.NewWatchPrefixOp[*host](c, "/w", opt)
		},
		what: "watch prefix /w/",
	}}
	putNamed(t, c, "/w/k", "k")
	for _, o := range options {
		for _, k := range ops {
			t.Run(o.name+" on a "+k.kind+" watch", func(t *testing.T) {
				op := k.newOp(o.opt)
				t.Cleanup(op.Close)
				called := false
				var err error
				require.NotPanics(t, func() {
					err = op.Watch(testContext(t), func(*storage.Event[*host]) error { called = true; return nil })
				})
				require.Error(t, err)
				require.ErrorContains(t, err, k.what)
				require.False(t, called, "handle called despite an invalid option")
				require.Empty(t, op.Error())
			})
		}
	}
}

func TestWatchOnAClosedClientReportsOneErrorAndStops(t *testing.T) {
	verifyNoLeaks(t)
	s, err := storagetest.Start()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	wc, err := s.NewClient(clientv3.Config{DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wc.Close() }) // on failure; a second Close is harmless

	op := storage.NewWatchPrefixOp[*host](wc, "/w")
	t.Cleanup(op.Close)
	rec := newEventQueue()
	require.NoError(t, op.Watch(testContext(t), rec.handle))
	putNamed(t, s.Client(), "/w/a", "a")
	require.Equal(t, "/w/a", rec.next(t).Key, "the watch runs")

	_ = wc.Close() // reports context.Canceled: its own context ends
	err = recvValue(t, op.Error())
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "client closed")
	require.ErrorContains(t, err, "watch prefix /w/")

	select {
	case err := <-op.Error():
		t.Fatalf("a second error: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	require.Empty(t, rec.c)
	// A closed client returns closed watch channels at once: a loop that
	// retried would count a resume per spin.
	require.Less(t, storage.WatchRecovery(op).Resumes, int64(3))
	op.Close()
}
