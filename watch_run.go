package storage

// The lifecycle a WatchOp, a Cache and a cache subscription share: one run
// at a time, Close from any goroutine (also from inside the handler), and
// one error per run on Error().

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/metadata"
)

// runs is the lifecycle of a watch: the current run, Error(), and the name
// of the watch in errors.
type runs struct {
	what string     // names the watch in errors: "watch /a/"
	errc chan error // cap 1; the run's goroutine sends, never closed

	// mu protects run and the closed and sent fields of every run. A run is
	// current from start until it has ended: its goroutine (or, while the
	// initial read runs, the caller of start) has exited and it was closed,
	// or its initial read failed. Runs are therefore never current at once,
	// and every sink call of a run happens before the next run starts.
	mu  sync.Mutex
	run *watchRun // the current run, nil when none
}

func newRuns(what string) runs { return runs{what: what, errc: make(chan error, 1)} }

// watchRun is one run, from start until it has ended.
type watchRun struct {
	sink runEnd
	// md is the outgoing metadata of a watcher run's watch requests:
	// clientv3 picks a watch stream by it, and a progress request must
	// reach the run's stream.
	md     metadata.MD
	cancel context.CancelCauseFunc
	// donec is closed when the run's goroutine has exited, or when the
	// caller of start is done with it (the initial read failed or the run
	// was closed during it).
	donec chan struct{}
	// caller is the id of the goroutine that calls the sink (and so the
	// user's handler), 0 when none does: Close from inside a handler must
	// not wait for itself.
	caller atomic.Uint64

	closed bool // guarded by runs.mu: close was called for this run
	sent   bool // guarded by runs.mu: the run sent its error on errc
}

// runEnd is what a run tells its sink about its end.
type runEnd interface {
	// stopped reports that the run stopped on its own with err.
	stopped(err error)
	// ended reports that the run has ended: it makes no more calls. It is
	// called with the lock of runs held, before another run can start.
	ended()
}

// start makes run current, calls first (the initial read and its delivery)
// from the caller's goroutine, then follow in a goroutine governed by ctx,
// with the revision first returned. An error from first is returned and
// nothing is left running. While a run is current (also while a close of
// it waits for its goroutine) start refuses with ErrWatchAlreadyInProgress:
// waiting instead would deadlock a handler that closes its run and starts
// another, since the run ends only once the handler has returned.
func (r *runs) start(ctx context.Context, run *watchRun, first func(ctx context.Context) (int64, error),
	follow func(ctx context.Context, rev int64)) error {
	r.mu.Lock()
	if r.run != nil {
		r.mu.Unlock()
		return fmt.Errorf("%s: %w", r.what, ErrWatchAlreadyInProgress)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	run.cancel, run.donec = cancel, make(chan struct{})
	r.run = run
	r.mu.Unlock()

	run.caller.Store(goid())
	rev, err := first(ctx)
	run.caller.Store(0)
	r.mu.Lock()
	if err == nil && !run.closed {
		r.mu.Unlock()
		go func() {
			defer close(run.donec)
			defer r.exited(run)
			run.caller.Store(goid())
			follow(ctx, rev)
		}()
		return nil
	}
	// The run ends here: the read failed, or a close came during it (from
	// inside the handler, or from a goroutine that waits on donec).
	closed := run.closed
	r.endLocked(run)
	r.mu.Unlock()
	cancel(nil)
	close(run.donec)
	var stop stopError
	if errors.As(err, &stop) {
		err = stop.err
	}
	if closed {
		return nil // the close decides: the run started and was stopped
	}
	return err
}

// close stops the current run, if any, and returns once its goroutine has
// exited; every concurrent close waits for that same exit. Called from
// inside the sink it does not wait for itself: the run then ends when its
// goroutine exits. An error the run sent and nobody read is dropped; an
// error of a later run never is. Idempotent.
func (r *runs) close() {
	r.mu.Lock()
	run := r.run
	if run == nil {
		r.mu.Unlock()
		return
	}
	run.closed = true
	r.mu.Unlock()
	run.cancel(errClosed)
	if run.caller.Load() == goid() {
		return // the run ends once the handler returns (see exited)
	}
	<-run.donec
	r.mu.Lock()
	r.endLocked(run)
	r.mu.Unlock()
}

// exited is the last step of a run's goroutine: a run closed from inside
// its handler ends here, since no close waits for it.
func (r *runs) exited(run *watchRun) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if run.closed {
		r.endLocked(run)
	}
}

// endLocked ends run unless it has ended already: its unread error is
// dropped, the sink learns it ended, and another run may start. Only the
// current run can have an error on errc, since each run's end drains its own.
func (r *runs) endLocked(run *watchRun) {
	if r.run != run {
		return
	}
	if run.sent {
		select {
		case <-r.errc:
		default:
		}
	}
	run.sink.ended()
	r.run = nil
}

// halt ends a run that stopped on its own: the sink learns why, and the
// error goes to Error() unless the run was closed meanwhile.
func (r *runs) halt(run *watchRun, err error) {
	if errors.Is(err, errClosed) {
		return
	}
	var stop stopError
	if errors.As(err, &stop) {
		err = stop.err
	}
	run.sink.stopped(err)
	r.mu.Lock()
	defer r.mu.Unlock()
	if run.closed {
		return
	}
	select {
	case r.errc <- err:
		run.sent = true
	default:
	}
}

// propagateErrors forwards errc to ch until ctx ends.
func propagateErrors(ctx context.Context, errc <-chan error, ch chan error) {
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-errc:
				select {
				case ch <- err:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
}

// goid returns the current goroutine's id, parsed from its stack header
// ("goroutine 42 [running]:"). Go offers no other way for Close to know it
// is being called from inside the handler it would otherwise wait for.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = b[len("goroutine "):]
	for i, c := range b {
		if c == ' ' {
			b = b[:i]
			break
		}
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}
