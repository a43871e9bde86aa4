package storage

// The receiver of a watch and its queue: the one place where the backlog of
// a slow handler can be bounded (see watchFrom).

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// receive moves responses from wch into q until the watch ends or the
// backlog passes maxPending; it stops q with the reason.
func (w *watcher) receive(ctx context.Context, cancel context.CancelFunc, wch clientv3.WatchChan, q *respQueue) {
	for {
		select {
		case <-ctx.Done():
			q.stop(ctx.Err())
			return
		case <-w.rereadc:
			cancel()
			q.stop(fmt.Errorf("%s: %w", w.what, errReread))
			return
		case resp, ok := <-wch:
			if !ok {
				if err := w.client.Ctx().Err(); err != nil {
					// clientv3 returns a closed channel at once for a closed
					// client: retrying would spin.
					q.stop(stopError{fmt.Errorf("%s: %w: %w", w.what, errClientClosed, err)})
					return
				}
				q.stop(errWatchClosed)
				return
			}
			pending := q.push(resp, receiptTime())
			w.recordPending(pending)
			if pending > w.maxPending {
				cancel()
				w.backlogs.Add(1)
				q.stop(errBacklog)
				return
			}
		}
	}
}

func (w *watcher) recordPending(n int) {
	for {
		seen := w.maxPendingSeen.Load()
		if int64(n) <= seen || w.maxPendingSeen.CompareAndSwap(seen, int64(n)) {
			return
		}
	}
}

// respQueue holds the watch responses received and not yet delivered.
type respQueue struct {
	mu      sync.Mutex // protects the following fields
	resps   []queuedResp
	pending int   // events in resps
	err     error // why receiving stopped; popped once resps is empty

	ready chan struct{} // cap 1: signalled after every change, never closed
}

// queuedResp is a response and when it was received (zero when no
// observer listens, see receiptTime).
type queuedResp struct {
	resp    clientv3.WatchResponse
	receipt time.Time
}

// push adds resp, received at receipt, and returns the number of events
// pending.
func (q *respQueue) push(resp clientv3.WatchResponse, receipt time.Time) int {
	q.mu.Lock()
	q.resps = append(q.resps, queuedResp{resp, receipt})
	q.pending += len(resp.Events)
	n := q.pending
	q.mu.Unlock()
	q.signal()
	return n
}

// stop records why no more responses will come.
func (q *respQueue) stop(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	q.signal()
}

func (q *respQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop returns the oldest response and when it was received, waiting for
// one; once the queue is empty and receiving stopped, it returns why.
func (q *respQueue) pop(ctx context.Context) (clientv3.WatchResponse, time.Time, error) {
	for {
		q.mu.Lock()
		if len(q.resps) > 0 {
			r := q.resps[0]
			q.resps[0] = queuedResp{}
			q.resps = q.resps[1:]
			q.pending -= len(r.resp.Events)
			q.mu.Unlock()
			return r.resp, r.receipt, nil
		}
		err := q.err
		q.mu.Unlock()
		if err != nil {
			return clientv3.WatchResponse{}, time.Time{}, err
		}
		select {
		case <-ctx.Done():
			return clientv3.WatchResponse{}, time.Time{}, ctx.Err()
		case <-q.ready:
		}
	}
}
