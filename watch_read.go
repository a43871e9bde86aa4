package storage

// The paged reads of a watch: the first read of a run and the re-reads after
// a compaction or a response too large to receive.

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// initialReadAttempts bounds the attempts of an initial read that etcd
// compacts between its pages every time.
const initialReadAttempts = 5

// read reads the whole key or prefix and resets the sink to it; from is the
// revision the watch had reached (0 for the initial read).
//
// The pages of a read are pinned to the first page's revision, so a
// compaction between two pages fails the read. A re-read inside the loop
// returns that failure to the loop, which backs off and re-reads; the
// initial read has no loop around it, so it starts over here instead
// (bounded, with the loop's backoff).
func (w *watcher) read(ctx context.Context, s sink, from int64) (int64, error) {
	w.reading.Store(true)
	defer w.reading.Store(false)
	kvs, rev, err := w.readAll(ctx)
	for attempt := 1; from == 0 && errors.Is(err, rpctypes.ErrCompacted); attempt++ {
		if attempt == initialReadAttempts {
			err = fmt.Errorf("%w (compacted during each of %d attempts)", err, attempt)
			break
		}
		if !sleepCtx(ctx, backoff(attempt)) {
			return 0, fmt.Errorf("%s: read: %w", w.what, context.Cause(ctx))
		}
		kvs, rev, err = w.readAll(ctx)
	}
	if err != nil {
		if isAuthError(err) {
			return 0, stopError{err}
		}
		if cerr := w.client.Ctx().Err(); cerr != nil {
			// A closed client fails every read at once: retrying never ends.
			return 0, stopError{fmt.Errorf("%s: %w: %w", w.what, errClientClosed, cerr)}
		}
		return 0, err
	}
	w.hooks.restarted(from, rev)
	if err := s.reset(ctx, kvs, rev); err != nil {
		return 0, stopError{fmt.Errorf("%s: %w", w.what, err)}
	}
	return rev, nil
}

// readAll reads the key, or the prefix in pages all pinned to the first
// page's revision. A page too large for the client's receive limit is read
// again in halves.
func (w *watcher) readAll(ctx context.Context) ([]*mvccpb.KeyValue, int64, error) {
	if w.end == "" {
		resp, err := w.client.Get(ctx, w.key)
		if status.Code(err) == codes.ResourceExhausted {
			return nil, 0, stopError{fmt.Errorf("%s: read: the value exceeds the client's receive limit (MaxCallRecvMsgSize): %w", w.what, err)}
		}
		if err != nil {
			return nil, 0, fmt.Errorf("%s: read: %w", w.what, err)
		}
		return resp.Kvs, resp.Header.Revision, nil
	}
	var kvs []*mvccpb.KeyValue
	var rev int64
	start, limit := w.key, int64(readPageSize)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(w.end), clientv3.WithLimit(limit)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := w.client.Get(ctx, start, opts...)
		if status.Code(err) == codes.ResourceExhausted {
			if limit == 1 {
				// One value is larger than the client may receive: no retry
				// can ever read it.
				return nil, 0, stopError{fmt.Errorf("%s: read from %q: a value exceeds the client's receive limit (MaxCallRecvMsgSize): %w", w.what, start, err)}
			}
			limit /= 2
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("%s: read at revision %d: %w", w.what, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return kvs, rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		w.hooks.betweenPages()
	}
}
