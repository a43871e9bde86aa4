package main

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/etcdkit/storage"
)

// syncWriter lets the story and the watch handler print lines without
// interleaving them.
type syncWriter struct {
	mu sync.Mutex // protects w
	w  io.Writer
}

func (s *syncWriter) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format, args...)
}

// watchLog records the last event type of each key the watch delivered, so
// that the story waits for an event instead of sleeping.
type watchLog struct {
	mu      sync.Mutex // protects the following fields
	last    map[string]storage.EventType
	changed chan struct{} // closed and replaced on every record
}

func newWatchLog() *watchLog {
	return &watchLog{last: make(map[string]storage.EventType), changed: make(chan struct{})}
}

func (l *watchLog) record(key string, t storage.EventType) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last[key] = t
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitFor returns once cond holds for the log, or an error once ctx ends or
// waitLimit passes. cond runs with the log locked.
func (l *watchLog) waitFor(ctx context.Context, cond func(last map[string]storage.EventType) bool) error {
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	for {
		l.mu.Lock()
		ok, changed := cond(l.last), l.changed
		l.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the watch: %w", ctx.Err())
		}
	}
}

// plural returns noun for n == 1, else noun + "s".
func plural(n int64, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}
