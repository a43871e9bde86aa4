//go:build storage_testhooks

package storage_test

// The chaos test's workload (chaos_test.go): writers through ops and
// caches, cache readers, and the slow watcher's writer. Every write is
// recorded with its outcome for the judge.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/watchcheck"
)

// startWorkload starts the writers, the slow sub-prefix writer and the
// cache readers; they stop when ctx ends.
func (r *chaosTrial) startWorkload(ctx context.Context, wg *sync.WaitGroup) {
	clus := r.cc.clus
	for i := range 8 {
		name := fmt.Sprintf("op%d", i)
		rng := rand.New(rand.NewPCG(r.opt.seed, uint64(10+i))) //nolint:gosec // a seeded workload
		client := clus.Client(i % len(clus.Members))
		wg.Add(1)
		go func() { defer wg.Done(); r.opWriter(ctx, name, rng, client) }()
	}
	for i, s := range r.caches {
		wrng := rand.New(rand.NewPCG(r.opt.seed, uint64(20+i))) //nolint:gosec // a seeded workload
		rrng := rand.New(rand.NewPCG(r.opt.seed, uint64(30+i))) //nolint:gosec // a seeded workload
		wg.Add(2)
		go func() { defer wg.Done(); r.cacheWriter(ctx, s, wrng) }()
		go func() { defer wg.Done(); r.cacheReader(ctx, s, rrng) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.slowWriter(ctx) }()
}

// exec runs one write under the gate with a short timeout and records it.
func (r *chaosTrial) exec(ctx context.Context, w chaosWrite, op func(ctx context.Context) (int64, error)) chaosWrite {
	r.gate.RLock()
	defer r.gate.RUnlock()
	w.ID = int(r.nextID.Add(1))
	w.StartMs = r.ms()
	octx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
	rev, err := op(octx)
	cancel()
	w.EndMs = r.ms()
	w.Revision = rev
	switch {
	case err == nil:
		w.Outcome = chaosOK
		r.acks.Add(1)
	case errors.Is(err, storage.ErrAlreadyExists), errors.Is(err, storage.ErrValueVersionMismatch),
		errors.Is(err, storage.ErrOperationConstraintViolated):
		w.Outcome = chaosFailed
	default:
		w.Outcome, w.Revision = chaosUnknown, 0
	}
	if err != nil {
		w.Err = err.Error()
	}
	r.mu.Lock()
	r.writes = append(r.writes, w)
	r.mu.Unlock()
	return w
}

// opWriter writes through the library's ops: puts, creates, updates and
// deletes of read values, prefix deletes, txns, TTL puts and
// delete-then-create.
func (r *chaosTrial) opWriter(ctx context.Context, name string, rng *rand.Rand, client *clientv3.Client) {
	for n := 0; ctx.Err() == nil; n++ {
		sub, k := rng.IntN(chaosSubPrefixes), rng.IntN(chaosSubKeys)
		key := r.key(sub, k)
		tag := fmt.Sprintf("%s.%d", name, n)
		v := &taggedValue{Key: key, Tag: tag}
		switch p := rng.IntN(100); {
		case p < 25:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "put", PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewPutOp(client, key, v)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 35:
			ttl := time.Duration(1+rng.IntN(2)) * time.Second
			r.exec(ctx, chaosWrite{Writer: name, Kind: "ttl-put", PutKeys: []string{key}, Tags: []string{tag}, TTL: true},
				func(ctx context.Context) (int64, error) {
					op := storage.NewPutOp(client, key, v).WithTTL(ttl)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 50:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "create", PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewCreateOp(client, key, v)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 80:
			gctx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
			old, err := storage.NewGetOp[*taggedValue](client, key).Exec(gctx)
			cancel()
			switch {
			case errors.Is(err, storage.ErrNotFound):
				old = &taggedValue{Key: key} // version 0: Update creates
			case err != nil:
				continue
			}
			if p < 70 {
				old.Tag = tag
				r.exec(ctx, chaosWrite{Writer: name, Kind: "update", PutKeys: []string{key}, Tags: []string{tag}},
					func(ctx context.Context) (int64, error) {
						op := storage.NewUpdateOp(client, key, old)
						err := op.Exec(ctx)
						return op.Revision(), err
					})
				continue
			}
			if old.Version() == 0 {
				continue
			}
			r.exec(ctx, chaosWrite{Writer: name, Kind: "delete-value", DelKeys: []string{key}, DelValue: true},
				func(ctx context.Context) (int64, error) {
					op := storage.NewDeleteValueOp(client, key, old)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 82:
			sp := fmt.Sprintf("%sk/s%d/", r.prefix, sub)
			r.exec(ctx, chaosWrite{Writer: name, Kind: "delete-prefix", DelPrefix: sp},
				func(ctx context.Context) (int64, error) {
					op := storage.NewDeletePrefixOp(client, sp)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 92:
			r.txn(ctx, name, n, rng, client)
		default:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "delete", DelKeys: []string{key}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewDeleteKeyOp(client, key)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
			r.exec(ctx, chaosWrite{Writer: name, Kind: "re-create", PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					op := storage.NewCreateOp(client, key, v)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		}
	}
}

// txn commits 2 to 4 ops on keys of distinct sub-prefixes: puts, creates and
// key deletes.
func (r *chaosTrial) txn(ctx context.Context, name string, n int, rng *rand.Rand, client *clientv3.Client) {
	w := chaosWrite{Writer: name, Kind: "txn"}
	var ops []storage.TxnOperation
	for i, sub := range rng.Perm(chaosSubPrefixes)[:2+rng.IntN(3)] {
		key := r.key(sub, rng.IntN(chaosSubKeys))
		tag := fmt.Sprintf("%s.%d.%d", name, n, i)
		v := &taggedValue{Key: key, Tag: tag}
		switch rng.IntN(4) {
		case 0:
			ops = append(ops, storage.NewCreateOp(client, key, v))
		case 1:
			ops = append(ops, storage.NewDeleteKeyOp(client, key))
			w.DelKeys = append(w.DelKeys, key)
			continue
		default:
			ops = append(ops, storage.NewPutOp(client, key, v))
		}
		w.PutKeys, w.Tags = append(w.PutKeys, key), append(w.Tags, tag)
	}
	r.exec(ctx, w, func(ctx context.Context) (int64, error) {
		err := storage.NewTxn(client, ops...).Commit(ctx)
		return ops[0].(interface{ Revision() int64 }).Revision(), err
	})
}

// cacheWriter writes through a cache: puts, creates, updates and deletes of
// cached values, prefix deletes. A successful put is recorded as a read of
// its revision: no later read may return an older one.
func (r *chaosTrial) cacheWriter(ctx context.Context, s *chaosCacheSubj, rng *rand.Rand) {
	name := "cache-" + s.name
	for n := 0; ctx.Err() == nil; n++ {
		sub, k := rng.IntN(chaosSubPrefixes), rng.IntN(chaosSubKeys)
		key := r.key(sub, k)
		tag := fmt.Sprintf("%s.%d", name, n)
		v := &taggedValue{Key: key, Tag: tag}
		put := func(kind string, op storage.PutOp[*taggedValue]) {
			start := chaosClock.Add(1)
			w := r.exec(ctx, chaosWrite{Writer: name, Kind: kind, PutKeys: []string{key}, Tags: []string{tag}},
				func(ctx context.Context) (int64, error) {
					err := op.Exec(ctx)
					return op.Revision(), err
				})
			if w.Outcome == chaosOK {
				s.record(watchcheck.CacheRead{Key: key, ModRevision: w.Revision, Start: start, End: chaosClock.Add(1)})
			}
		}
		switch p := rng.IntN(100); {
		case p < 35:
			put("cache-put", s.c.Put(v))
		case p < 50:
			put("cache-create", s.c.Create(v))
		case p < 90:
			old, err := s.c.Get(key).Exec(ctx)
			if err != nil {
				continue // not cached; readers check read errors
			}
			if p < 75 {
				old.Tag = tag
				put("cache-update", s.c.Update(old))
				continue
			}
			r.exec(ctx, chaosWrite{Writer: name, Kind: "cache-delete-value", DelKeys: []string{key}, DelValue: true},
				func(ctx context.Context) (int64, error) {
					op := s.c.DeleteValue(old)
					err := op.Exec(ctx)
					return op.Revision(), err
				})
		case p < 92:
			sp := fmt.Sprintf("%sk/s%d/", r.prefix, sub)
			r.exec(ctx, chaosWrite{Writer: name, Kind: "cache-delete-prefix", DelPrefix: sp},
				func(ctx context.Context) (int64, error) {
					op := s.c.DeletePrefix(sp)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
		default:
			r.exec(ctx, chaosWrite{Writer: name, Kind: "cache-delete", DelKeys: []string{key}},
				func(ctx context.Context) (int64, error) {
					op := s.c.DeleteByKey(key)
					_, err := op.Exec(ctx)
					return op.Revision(), err
				})
		}
	}
}

// cacheReader reads random keys and sub-prefixes from a cache, records what
// it got, and mutates every value it gets back.
func (r *chaosTrial) cacheReader(ctx context.Context, s *chaosCacheSubj, rng *rand.Rand) {
	for n := 0; ctx.Err() == nil; n++ {
		sub := rng.IntN(chaosSubPrefixes)
		if n%20 == 0 {
			sp := fmt.Sprintf("%sk/s%d/", r.prefix, sub)
			start := chaosClock.Add(1)
			items, err := s.c.GetPrefix(sp).Exec(ctx)
			end := chaosClock.Add(1)
			if err != nil {
				r.violate(s.name, "get prefix %s: %v", sp, err)
				return
			}
			for _, v := range items {
				s.record(watchcheck.CacheRead{Key: v.Key, ModRevision: v.ModRevision(), Start: start, End: end})
				v.Tag = "mutated"
			}
		}
		key := r.key(sub, rng.IntN(chaosSubKeys))
		start := chaosClock.Add(1)
		v, err := s.c.Get(key).Exec(ctx)
		end := chaosClock.Add(1)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			s.record(watchcheck.CacheRead{Key: key, Start: start, End: end})
		case err != nil:
			r.violate(s.name, "get %s: %v", key, err)
			return
		default:
			s.record(watchcheck.CacheRead{Key: key, ModRevision: v.ModRevision(), Start: start, End: end})
			v.Tag = "mutated"
			if again, err := s.c.Get(key).Exec(ctx); err == nil && again.Tag == "mutated" {
				r.violate(s.name, "get %s: mutating a result changed the cache", key)
			}
		}
		time.Sleep(2 * time.Millisecond) // pacing: reads from memory would starve the writers
	}
}

// slowWriter writes the slow watcher's sub-prefix a few times a second.
func (r *chaosTrial) slowWriter(ctx context.Context) {
	client := r.cc.clus.Client(2)
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond): // a few events per second
		}
		key := fmt.Sprintf("%sslow/%d", r.prefix, n%5)
		tag := fmt.Sprintf("slow.%d", n)
		r.exec(ctx, chaosWrite{Writer: "slow", Kind: "put", PutKeys: []string{key}, Tags: []string{tag}},
			func(ctx context.Context) (int64, error) {
				op := storage.NewPutOp(client, key, &taggedValue{Key: key, Tag: tag})
				err := op.Exec(ctx)
				return op.Revision(), err
			})
	}
}
