package storage_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

func TestWatchDeliversEachChangeWithItsFields(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)

	tests := []struct {
		name string
		// change writes under p (which holds p+"m" at version 1 and p+"d")
		// and returns the change's revision.
		change func(t *testing.T, p string) int64
		want   func(p string, rev int64) []storage.Event[*host]
	}{{
		name:   "a create is a put with IsCreate and version 1",
		change: func(t *testing.T, p string) int64 { return putNamed(t, c, p+"new", "n") },
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantPut(p+"new", "n", 1, rev)}
		},
	}, {
		name:   "a modify is a put with IsModify and the new version",
		change: func(t *testing.T, p string) int64 { return putNamed(t, c, p+"m", "m2") },
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantPut(p+"m", "m2", 2, rev)}
		},
	}, {
		name:   "a delete has the key, no value and the delete's revision",
		change: func(t *testing.T, p string) int64 { return deleteRev(t, c, p+"d") },
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantDelete(p+"d", rev)}
		},
	}, {
		name: "a txn's events share its revision and arrive in the txn's order",
		change: func(t *testing.T, p string) int64 {
			return txnRev(t, c,
				clientv3.OpPut(p+"x", hostNamedJSON("x")),
				clientv3.OpDelete(p+"d"),
				clientv3.OpPut(p+"m", hostNamedJSON("m2")),
				clientv3.OpPut(p+"a", hostNamedJSON("a")))
		},
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{
				wantPut(p+"x", "x", 1, rev), wantDelete(p+"d", rev),
				wantPut(p+"m", "m2", 2, rev), wantPut(p+"a", "a", 1, rev),
			}
		},
	}, {
		name:   "an undecodable put is an error event naming the key at the put's revision",
		change: func(t *testing.T, p string) int64 { return put(t, c, p+"m", "{not json") },
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantDecodeError(p+"m", rev)}
		},
	}, {
		name:   "a JSON null put is an error event",
		change: func(t *testing.T, p string) int64 { return put(t, c, p+"new", "null") },
		want: func(p string, rev int64) []storage.Event[*host] {
			return []storage.Event[*host]{wantDecodeError(p+"new", rev)}
		},
	}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fmt.Sprintf("/changes/%d/", i)
			putNamed(t, c, p+"d", "d")
			putNamed(t, c, p+"m", "m1")
			_, rec := startWatch(t, c, p)
			rec.take(t, 2) // the initial read

			rev := tt.change(t, p)
			want := tt.want(p, rev)
			requireWatchEvents(t, want, rec.take(t, len(want)))

			// The watch goes on, also after an error event.
			after := putNamed(t, c, p+"zz", "after")
			requireWatchEvents(t, []storage.Event[*host]{wantPut(p+"zz", "after", 1, after)}, []storage.Event[*host]{rec.next(t)})
		})
	}
}

func TestWatchSeesOnlyItsKeyOrPrefix(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)

	tests := []struct {
		name        string
		newOp       func(p string) storage.WatchOp[*host]
		before      []string // keys under p written before Watch
		wantInitial []string
		after       []string // keys under p written after Watch, in order
		wantEvents  []string // keys of the events they cause, in order
	}{{
		name:        "a key watch sees only that key",
		newOp:       func(p string) storage.WatchOp[*host] { return storage.NewWatchOp[*host](c, p+"k") },
		before:      []string{"k", "k2", "k/x", "j"},
		wantInitial: []string{"k"},
		after:       []string{"k2", "k/x", "kk", "k", "j", "k"},
		wantEvents:  []string{"k", "k"},
	}, {
		name:        "a prefix without trailing slash never sees keys that only start with it",
		newOp:       func(p string) storage.WatchOp[*host] { return storage.NewWatchPrefixOp[*host](c, p+"a") },
		before:      []string{"a", "ab", "ab/x", "a/0", "a0"},
		wantInitial: []string{"a/0"},
		after:       []string{"ab", "ab/x", "a", "a0", "a/x", "ab/y", "a/y/z"},
		wantEvents:  []string{"a/x", "a/y/z"},
	}, {
		name:        "a prefix with trailing slash sees nested keys but not its sibling",
		newOp:       func(p string) storage.WatchOp[*host] { return storage.NewWatchPrefixOp[*host](c, p+"a/") },
		before:      []string{"a/0/1", "b/0"},
		wantInitial: []string{"a/0/1"},
		after:       []string{"b/1", "a/1", "a", "a/1/2"},
		wantEvents:  []string{"a/1", "a/1/2"},
	}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fmt.Sprintf("/scope/%d/", i)
			for _, k := range tt.before {
				putNamed(t, c, p+k, k)
			}
			op := tt.newOp(p)
			rec := newEventQueue()
			require.NoError(t, op.Watch(testContext(t), rec.handle))
			t.Cleanup(op.Close)
			require.Equal(t, prefixKeys(p, tt.wantInitial), eventKeys(rec.take(t, len(rec.c))), "initial read")

			for _, k := range tt.after {
				putNamed(t, c, p+k, k)
			}
			// Events come in revision order, so once the last wanted key
			// arrived every key written before it was either delivered or
			// filtered out.
			want := prefixKeys(p, tt.wantEvents)
			require.Equal(t, want, eventKeys(rec.take(t, len(want))))
			rec.requireQuiet(t)
		})
	}
}

func TestWatchEmptyPrefixWatchesEveryKey(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	for _, k := range []string{"/a", "b", "/x/y"} {
		putNamed(t, c, k, k)
	}
	_, rec := startWatch(t, c, "")
	require.Equal(t, []string{"/a", "/x/y", "b"}, eventKeys(rec.take(t, len(rec.c))), "initial read")

	putNamed(t, c, "c", "c")
	putNamed(t, c, "/", "root")
	deleteRev(t, c, "/a")
	require.Equal(t, []string{"c", "/", "/a"}, eventKeys(rec.take(t, 3)))
}

func TestWatchTwiceIsAlreadyInProgress(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	op, rec := startWatch(t, c, "/w")

	err := op.Watch(testContext(t), rec.handle)
	require.ErrorIs(t, err, storage.ErrWatchAlreadyInProgress)
	require.ErrorContains(t, err, "/w/")

	// The first run goes on.
	rev := putNamed(t, c, "/w/a", "a")
	requireWatchEvents(t, []storage.Event[*host]{wantPut("/w/a", "a", 1, rev)}, []storage.Event[*host]{rec.next(t)})
}

func TestWatchCloseIsIdempotentAndWatchWorksAgainWithAFreshInitialRead(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	ctx := testContext(t)
	op := storage.NewWatchPrefixOp[*host](c, "/w")
	t.Cleanup(op.Close)

	op.Close() // before any Watch
	op.Close()

	putNamed(t, c, "/w/a", "a")
	rec := newEventQueue()
	require.NoError(t, op.Watch(ctx, rec.handle))
	require.Equal(t, []string{"/w/a"}, eventKeys(rec.take(t, 1)))

	op.Close()
	op.Close()
	rev := putNamed(t, c, "/w/b", "b")
	rec.requireQuiet(t) // closed: the put is not delivered

	rec2 := newEventQueue()
	require.NoError(t, op.Watch(ctx, rec2.handle))
	requireWatchEvents(t, []storage.Event[*host]{wantPut("/w/a", "a", 1, rev), wantPut("/w/b", "b", 1, rev)}, rec2.take(t, 2))
	rev = putNamed(t, c, "/w/c", "c")
	requireWatchEvents(t, []storage.Event[*host]{wantPut("/w/c", "c", 1, rev)}, []storage.Event[*host]{rec2.next(t)})
	require.Empty(t, rec.c, "the closed run's handler was called")
}

func TestWatchCloseFromInsideTheHandlerStopsDeliveryWithoutDeadlock(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)

	t.Run("during the initial read", func(t *testing.T) {
		putNamed(t, c, "/init/a", "a")
		putNamed(t, c, "/init/b", "b")
		op := storage.NewWatchPrefixOp[*host](c, "/init")
		t.Cleanup(op.Close)
		var keys []string
		err := op.Watch(testContext(t), func(e *storage.Event[*host]) error {
			keys = append(keys, e.Key)
			op.Close()
			return nil
		})
		t.Logf("Watch returned %v", err)
		require.Equal(t, []string{"/init/a"}, keys, "events after Close returned in the handler")
		require.Empty(t, op.Error())

		// Nothing is running: Watch needs no Close.
		rec := newEventQueue()
		require.NoError(t, op.Watch(testContext(t), rec.handle))
		require.Equal(t, []string{"/init/a", "/init/b"}, eventKeys(rec.take(t, 2)))
	})

	t.Run("during the watch", func(t *testing.T) {
		op := storage.NewWatchPrefixOp[*host](c, "/run")
		t.Cleanup(op.Close)
		rec := newEventQueue()
		closed := make(chan struct{})
		require.NoError(t, op.Watch(testContext(t), func(e *storage.Event[*host]) error {
			rec.c <- *e
			if e.Key == "/run/stop" {
				op.Close()
				close(closed)
			}
			return nil
		}))

		// One txn: the events after /run/stop come in the same response.
		txnRev(t, c, clientv3.OpPut("/run/stop", hostNamedJSON("stop")), clientv3.OpPut("/run/same-txn", hostNamedJSON("x")))
		waitSignal(t, closed, "Close from inside the handler returned")
		require.Equal(t, "/run/stop", rec.next(t).Key)

		putNamed(t, c, "/run/later", "later")
		rec.requireQuiet(t)
		require.Empty(t, op.Error())
	})
}

func TestWatchFilterPutDropsLivePutsButNotTheInitialRead(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	putNamed(t, c, "/w/a", "a")

	op := storage.NewWatchPrefixOp[*host](c, "/w", clientv3.WithFilterPut())
	t.Cleanup(op.Close)
	rec := newEventQueue()
	require.NoError(t, op.Watch(testContext(t), rec.handle))
	require.Equal(t, []string{"/w/a"}, eventKeys(rec.take(t, 1)), "the initial read is not filtered")

	putNamed(t, c, "/w/b", "b")
	rev := deleteRev(t, c, "/w/a")
	requireWatchEvents(t, []storage.Event[*host]{wantDelete("/w/a", rev)}, []storage.Event[*host]{rec.next(t)})
}

func TestWatchFiltersHoldForTheEventsOfAReRead(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	const p = "/f/"
	cases := []struct {
		name     string
		filter   clientv3.OpOption
		sentinel func(t *testing.T) // a change after the re-read began or ended
		// want is every event after the initial read, as "type key", sorted.
		want []string
	}{{
		name:     "WithFilterDelete synthesises no delete",
		filter:   clientv3.WithFilterDelete(),
		sentinel: func(t *testing.T) { putNamed(t, c, p+"s", "s") },
		want:     []string{"put /f/k2", "put /f/k3", "put /f/s"},
	}, {
		name:   "WithFilterPut synthesises no put",
		filter: clientv3.WithFilterPut(),
		// k0 is known to the watch: its delete arrives live or from the re-read.
		sentinel: func(t *testing.T) { deleteRev(t, c, p+"k0") },
		want:     []string{"delete /f/k0", "delete /f/k1"},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			_, err := c.Delete(ctx, p, clientv3.WithPrefix())
			require.NoError(t, err)
			for _, k := range []string{"k0", "k1", "k2"} {
				putNamed(t, c, p+k, k)
			}
			rec := newEventQueue()
			blocked, release := make(chan struct{}), make(chan struct{})
			var blockOnce, releaseOnce sync.Once
			unblock := func() { releaseOnce.Do(func() { close(release) }) }
			op := storage.NewWatchPrefixOp[*host](c, p, tc.filter)
			t.Cleanup(op.Close)
			t.Cleanup(unblock)
			watchErr := make(chan error, 1)
			go func() {
				watchErr <- op.Watch(ctx, func(e *storage.Event[*host]) error {
					rec.c <- *e
					if e.Key == p+"k2" {
						blockOnce.Do(func() { close(blocked); <-release })
					}
					return nil
				})
			}()
			waitSignal(t, blocked, "initial read reached its last item")

			t.Log("phase 1: while the initial read is delivered, delete k1, change k2, create k3; compact past the read")
			deleteRev(t, c, p+"k1")
			putNamed(t, c, p+"k2", "k2'")
			last := putNamed(t, c, p+"k3", "k3")
			_, err = c.Compact(ctx, last, clientv3.WithCompactPhysical())
			require.NoError(t, err)

			t.Log("phase 2: release the handler; the watch must re-read, filtering what it synthesises")
			unblock()
			require.NoError(t, recvValue(t, watchErr), "Watch")
			require.Equal(t, []string{p + "k0", p + "k1", p + "k2"}, eventKeys(rec.take(t, 3)), "the initial read is not filtered")
			tc.sentinel(t)
			got := rec.take(t, len(tc.want))
			rec.requireQuiet(t)
			described := make([]string, len(got))
			for i, e := range got {
				described[i] = string(e.Type) + " " + e.Key
			}
			slices.Sort(described)
			require.Equal(t, tc.want, described)
			require.GreaterOrEqual(t, storage.WatchRecovery(op).Relists, int64(1), "no re-read happened")
		})
	}
}

func TestWatchProgressNotificationsMoveAnIdleWatch(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t, storagetest.WithServerConfig(func(cfg *embed.Config) {
		cfg.WatchProgressNotifyInterval = 100 * time.Millisecond
	}))
	op, rec := startWatch(t, c, "/w")
	require.Zero(t, storage.WatchRecovery(op).Progress)

	// Writes elsewhere move the store's revision past the watch's.
	putNamed(t, c, "/other/a", "a")
	require.Eventually(t, func() bool { return storage.WatchRecovery(op).Progress >= 1 }, waitTimeout, 10*time.Millisecond)
	require.Empty(t, rec.c, "events for keys outside the prefix")
}

func TestWatchReplayOfManyWritesEqualsAFreshRead(t *testing.T) {
	verifyNoLeaks(t)
	c := newClient(t)
	const p = "/replay/"
	rng := rand.New(rand.NewPCG(1, 2))
	key := func() string { return fmt.Sprintf("%sk%02d", p, rng.IntN(16)) }

	for i := range 5 {
		putNamed(t, c, fmt.Sprintf("%sk%02d", p, i), "initial")
	}
	op, rec := startWatch(t, c, p)
	initial := rec.take(t, len(rec.c))
	require.Len(t, initial, 5)

	for i := range 200 {
		name := fmt.Sprint(i)
		switch r := rng.IntN(10); {
		case r < 5:
			putNamed(t, c, key(), name)
		case r < 7:
			deleteRev(t, c, key())
		default:
			var txnOps []clientv3.Op
			seen := map[string]bool{}
			for range 2 + rng.IntN(3) {
				k := key()
				if seen[k] {
					continue
				}
				seen[k] = true
				if rng.IntN(3) == 0 {
					txnOps = append(txnOps, clientv3.OpDelete(k))
				} else {
					txnOps = append(txnOps, clientv3.OpPut(k, hostNamedJSON(name)))
				}
			}
			txnRev(t, c, txnOps...)
		}
	}
	putNamed(t, c, p+"sentinel", "last")
	events := rec.until(t, p+"sentinel")

	// Each change exactly once, in revision order: with no compaction every
	// put carries the previous version + 1 (1 after a delete), and every
	// delete removes a key the replay holds.
	versions := map[string]int64{}
	for _, e := range initial {
		versions[e.Key] = e.Value.Version()
	}
	var lastRev int64
	for i, e := range events {
		require.GreaterOrEqual(t, e.Revision, lastRev, "event %d out of revision order", i)
		lastRev = e.Revision
		switch e.Type {
		case storage.EventTypePut:
			want := versions[e.Key] + 1
			require.Equal(t, want, e.Value.Version(), "event %d: %s", i, e.Key)
			require.Equal(t, want == 1, e.IsCreate, "event %d: IsCreate", i)
			require.Equal(t, want > 1, e.IsModify, "event %d: IsModify", i)
			versions[e.Key] = want
		case storage.EventTypeDelete:
			require.Contains(t, versions, e.Key, "event %d: delete of a key the replay lacks", i)
			delete(versions, e.Key)
		default:
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	requireReplayEqualsEtcd(t, c, p, append(initial, events...))
	require.Zero(t, storage.WatchRecovery(op).Resumes+storage.WatchRecovery(op).Relists, "a healthy watch needed recovery")
}

func TestEdgeUndecodableValueMidStreamIsAnErrorEventAndTheWatchGoesOn(t *testing.T) {
	verifyNoLeaks(t)
	client := newClient(t)
	ctx := testContext(t)
	for i, tc := range []struct {
		name string
		bad  []byte
	}{
		{"not JSON", []byte("not json {")},
		{"JSON null", []byte("null")},
		{"JSON of another shape", []byte(`{"port":"eighty"}`)},
		{"gzip magic, broken stream", []byte{0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02, 0x03}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/edge/bad/%d/", i)
			key := prefix + "k"
			named := fmt.Sprintf("failed to decode %q", key)
			keyOf := func(h *host) string { return prefix + h.Name }
			good1 := storage.NewPutOp(client, key, &host{Name: "k", Port: 1})
			require.NoError(t, good1.Exec(ctx))

			var rec recorder[*host]
			op := storage.NewWatchPrefixOp[*host](client, prefix)
			require.NoError(t, op.Watch(ctx, rec.handle))
			defer op.Close()
			cache := storage.NewCache(client, prefix, keyOf)
			require.NoError(t, cache.Start(ctx))
			defer cache.Stop()
			// steps checks that the cache's answers only move forward: once
			// it answered a step, it never answers an earlier one (never the
			// value from before the bad bytes, for one).
			steps := &stepReader{cache: cache, key: key}
			require.Equal(t, 0, steps.await(t, 0), "the cache does not serve the first value")

			t.Log("phase 1: raw bytes that cannot be decoded")
			resp, err := client.Put(ctx, key, string(tc.bad))
			require.NoError(t, err)
			revBad := resp.Header.Revision
			steps.await(t, 1)
			_, err = cache.Get(key).Exec(ctx)
			require.ErrorContains(t, err, named)
			require.NotErrorIs(t, err, storage.ErrNotFound)
			_, etcdErr := storage.NewGetOp[*host](client, key).Exec(ctx)
			require.ErrorContains(t, etcdErr, named, "an etcd read says otherwise")
			_, err = cache.GetPrefix("").Exec(ctx)
			require.ErrorContains(t, err, named, "GetPrefix over the key")
			_, etcdErr = storage.NewGetPrefixOp[*host](client, prefix).Exec(ctx)
			require.ErrorContains(t, etcdErr, named, "an etcd prefix read says otherwise")

			// A watch and a cache started now meet the bytes in their first read.
			var late recorder[*host]
			lateOp := storage.NewWatchPrefixOp[*host](client, prefix)
			require.NoError(t, lateOp.Watch(ctx, late.handle), "the initial read stopped at the bad bytes")
			defer lateOp.Close()
			lateCache := storage.NewCache(client, prefix, keyOf)
			require.NoError(t, lateCache.Start(ctx))
			defer lateCache.Stop()
			_, err = lateCache.Get(key).Exec(ctx)
			require.ErrorContains(t, err, named)

			t.Log("phase 2: a good value")
			good2 := storage.NewPutOp(client, key, &host{Name: "k", Port: 2})
			require.NoError(t, good2.Exec(ctx))
			steps.await(t, 2)
			got, err := cache.Get(key).Exec(ctx)
			require.NoError(t, err)
			assert.Equal(t, hostWithVersion("k", 2, 3), got)

			t.Log("phase 3: a delete")
			del := storage.NewDeleteKeyOp(client, key)
			_, err = del.Exec(ctx)
			require.NoError(t, err)
			steps.await(t, 3)
			_, err = cache.Get(key).Exec(ctx)
			require.ErrorIs(t, err, storage.ErrNotFound)
			require.ErrorContains(t, err, key)
			all, err := cache.GetPrefix("").Exec(ctx)
			require.NoError(t, err)
			require.Empty(t, all)

			t.Log("phase 4: the watches saw each step once and go on")
			require.Eventually(t, func() bool { return rec.lastRev() >= del.Revision() }, waitTimeout, 10*time.Millisecond, "the watch missed the delete")
			require.Eventually(t, func() bool { return late.lastRev() >= del.Revision() }, waitTimeout, 10*time.Millisecond, "the late watch missed the delete")
			for _, r := range []*recorder[*host]{&rec, &late} {
				events := r.snapshot()
				first := 1
				if r == &late {
					first = 0 // its first read saw the bad bytes
				} else {
					require.Equal(t, storage.EventTypePut, events[0].Type)
					require.Equal(t, 1, events[0].Value.Port)
				}
				require.Len(t, events, first+3, "events: %v", events)
				bad := events[first]
				require.Equal(t, storage.EventTypeError, bad.Type)
				require.Equal(t, key, bad.Key)
				require.ErrorContains(t, bad.Err, named)
				if r == &rec {
					require.Equal(t, revBad, bad.Revision)
				}
				require.Equal(t, storage.EventTypePut, events[first+1].Type)
				require.Equal(t, hostWithVersion("k", 2, 3), events[first+1].Value)
				require.Equal(t, good2.Revision(), events[first+1].Revision)
				require.Equal(t, storage.EventTypeDelete, events[first+2].Type)
				require.Equal(t, key, events[first+2].Key)
				require.Equal(t, del.Revision(), events[first+2].Revision)
			}
			requireNotStopped(t, "the watch", op.Error())
			requireNotStopped(t, "the late watch", lateOp.Error())
			requireNotStopped(t, "the cache", cache.Error())
			requireNotStopped(t, "the late cache", lateCache.Error())
		})
	}
}

// stepReader reads one key of a cache and classifies the answer: 0 the
// first value (port 1), 1 a decode error, 2 the second value (port 2), 3 not
// found. Answers must never go back to an earlier step.
type stepReader struct {
	cache storage.Cache[*host]
	key   string
	seen  int
}

func (s *stepReader) step(t *testing.T) int {
	t.Helper()
	v, err := s.cache.Get(s.key).Exec(context.Background())
	step := -1
	switch {
	case errors.Is(err, storage.ErrNotFound):
		step = 3
	case err != nil && strings.Contains(err.Error(), "failed to decode"):
		step = 1
	case err != nil:
		t.Fatalf("cache get %s: %v", s.key, err)
	case v.Port == 1:
		step = 0
	case v.Port == 2:
		step = 2
	}
	require.GreaterOrEqualf(t, step, s.seen, "the cache went back from step %d to %d (%v, %v)", s.seen, step, v, err)
	s.seen = step
	return step
}

// await polls until the cache answers step want, checking every answer on
// the way, and then a few more.
func (s *stepReader) await(t *testing.T, want int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.step(t) < want {
		require.Truef(t, time.Now().Before(deadline), "the cache never reached step %d", want)
		time.Sleep(time.Millisecond) // polling interval
	}
	for range 20 {
		s.step(t)
	}
	return s.seen
}

// arrivalLog records when each port arrived at one watch.
type arrivalLog struct {
	mu sync.Mutex // protects at
	at map[int]time.Time
}

func (a *arrivalLog) handle(e *storage.Event[*host]) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e.Type == storage.EventTypePut {
		if _, dup := a.at[e.Value.Port]; dup {
			return fmt.Errorf("port %d delivered twice", e.Value.Port)
		}
		a.at[e.Value.Port] = time.Now()
	}
	return nil
}

func (a *arrivalLog) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at)
}

func TestEdgeManyWatchesOnOneClientWithHeavyReadsGetEveryEvent(t *testing.T) {
	verifyNoLeaks(t)
	srv := newServer(t)
	client, writer := srv.Client(), newServerClient(t, srv)
	ctx := testContext(t)
	const blobs, watched = "/edge/heavy/blobs/", "/edge/heavy/watched/"
	const writes = 100
	watches := scaled(t, "EDGE_HEAVY_WATCHES", 100)
	loadBlobs(ctx, t, writer, blobs, 200, 16<<10)

	t.Logf("phase 1: %d watches and a cache on one client", watches)
	ops := make([]storage.WatchOp[*host], watches)
	arrivals := make([]*arrivalLog, watches)
	for i := range watches {
		arrivals[i] = &arrivalLog{at: map[int]time.Time{}}
		ops[i] = storage.NewWatchPrefixOp[*host](client, watched)
		t.Cleanup(ops[i].Close)
		require.NoError(t, ops[i].Watch(ctx, arrivals[i].handle))
	}
	cache := storage.NewCache(client, watched, func(h *host) string { return watched + h.Name })
	require.NoError(t, cache.Start(ctx))
	defer cache.Stop()

	t.Log("phase 2: two goroutines loop 3 MiB prefix reads on the same client (one decoding, one raw) while another client writes")
	rctx, stopReads := context.WithCancel(ctx)
	var decodedReads, rawReads atomic.Int64
	decodedDone, rawDone := make(chan error, 1), make(chan error, 1)
	go func() { decodedDone <- readLoop(rctx, client, blobs, &decodedReads) }()
	go func() { rawDone <- rawReadLoop(rctx, client, blobs, &rawReads) }()
	defer stopReads()
	// The writes start once both loops are under way, however long a 3 MiB
	// read takes on this machine: the loops then run through every write.
	require.Eventually(t, func() bool { return decodedReads.Load() >= 1 && rawReads.Load() >= 1 }, 60*time.Second, 10*time.Millisecond,
		"the read loops never completed a read (%v decoded, %v raw)", lazy(func() any { return decodedReads.Load() }),
		lazy(func() any { return rawReads.Load() }))
	sent := make([]time.Time, writes)
	tick := time.NewTicker(20 * time.Millisecond)
	for i := range writes {
		<-tick.C // the writer's pace
		sent[i] = time.Now()
		_, err := putAcked(ctx, writer, fmt.Sprintf("%s%02d", watched, i), i)
		require.NoError(t, err)
	}
	tick.Stop()

	// Delivery must not starve behind the reads: every event arrives, once
	// (the handler fails on a duplicate). How fast depends on the machine,
	// so the latencies are logged, and the wait is generous.
	t.Log("phase 3: every event reaches every watch and the cache")
	require.Eventually(t, func() bool {
		for _, a := range arrivals {
			if a.count() < writes {
				return false
			}
		}
		return true
	}, 60*time.Second, 10*time.Millisecond, "some watch misses events")
	require.Eventually(t, func() bool {
		got, err := cache.GetPrefix("").Exec(ctx)
		return err == nil && len(got) == writes
	}, 60*time.Second, 10*time.Millisecond, "the cache misses events")
	stopReads()
	require.NoError(t, <-decodedDone)
	require.NoError(t, <-rawDone)
	var lat []time.Duration
	for _, a := range arrivals {
		a.mu.Lock()
		for port, at := range a.at {
			lat = append(lat, at.Sub(sent[port]))
		}
		a.mu.Unlock()
	}
	slices.Sort(lat)
	t.Logf("%d deliveries during %d + %d heavy reads: p50 %v, p99 %v, max %v", len(lat), decodedReads.Load(), rawReads.Load(),
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
	for i, op := range ops {
		requireNotStopped(t, fmt.Sprintf("watch %d", i), op.Error())
	}
	requireNotStopped(t, "the cache", cache.Error())
}
