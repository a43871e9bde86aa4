package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// TestMain fails the run if a goroutine of the story (heartbeats, watch,
// cache) or of a server outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStory(t *testing.T) {
	t.Parallel()
	client := storagetest.New(t)

	var out bytes.Buffer
	// The story takes a few seconds (it waits for a TTL); how many depends
	// on the machine, so the time is logged, and only a hung story fails.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	require.NoError(t, story(ctx, client, &out))
	t.Logf("story took %v; output:\n%s", time.Since(start).Round(time.Millisecond), out.String())

	t.Run("tells the steps in order", func(t *testing.T) {
		var steps []string
		for line := range strings.Lines(out.String()) {
			if m := regexp.MustCompile(`^(\d+)\. `).FindStringSubmatch(line); m != nil {
				steps = append(steps, m[1])
			}
		}
		assert.Equal(t, strings.Split("1 2 3 4 5 6 7 8 9 10", " "), steps)
	})

	// In each line, # stands for a number that varies between runs.
	for _, tc := range []struct{ claim, line string }{
		{"the watch prints a registration",
			"watch: put    /demo/hosts/host-3 rev # (created)"},
		{"a second create fails with ErrAlreadyExists",
			"a second create fails: create /demo/databases/orders: key already exists"},
		{"a stale update names key and versions",
			"the stale copy is refused: update /demo/databases/orders: version 1, stored 2: value version mismatch"},
		{"a stale RevisionedValue is refused on its mod revision",
			"update /demo/maintenance/host-2: mod revision #, stored #: value version mismatch"},
		{"the failed txn names the failed op",
			"commit fails: txn: operation constraint violated: update /demo/inventory/host-1: version 1, stored 2: value version mismatch"},
		{"errors.Is finds both sentinels and nothing was written",
			"errors.Is finds ErrOperationConstraintViolated: true, ErrValueVersionMismatch: true; assignment written: false"},
		{"the same txn commits after a refresh",
			"database version 3, assignment version 1, inventory version 3 (2 of 4 slots used)"},
		{"a large value reads back unchanged",
			"read back: version 1, 48 rules, equal to what was written: true"},
		{"the cache lists the hosts in key order",
			`cache.GetPrefix("/demo/hosts/"): host-1, host-2, host-3`},
		{"cache results are fresh instances",
			"the cache still says zone eu-west-1a"},
		{"the watch prints the expiry",
			"watch: delete /demo/hosts/host-3 rev #"},
		{"the cache and etcd no longer have the expired host",
			"cache: host-1, host-2; host-3 exists in etcd: false"},
		{"a write through another client is in the cache after Sync",
			"after Sync the cache has host-4 in zone eu-west-1c (written at revision #, cache at #)"},
		{"the cache verifies against etcd",
			"verify: every key of the cache has etcd's mod revision at revision #"},
		{"the watch and the cache stop without errors",
			"done: watch closed and cache stopped, neither reported an error"},
	} {
		t.Run(tc.claim, func(t *testing.T) {
			pattern := strings.ReplaceAll(regexp.QuoteMeta(tc.line), "#", `\d+`)
			assert.Regexp(t, pattern, out.String())
		})
	}

	t.Run("a large value is stored gzip-compressed and smaller", func(t *testing.T) {
		m := regexp.MustCompile(`JSON (\d+) bytes, stored (\d+) bytes gzip-compressed \(raw get: starts 1f 8b\)`).
			FindStringSubmatch(out.String())
		require.NotNil(t, m)
		jsonSize, _ := strconv.Atoi(m[1])
		stored, _ := strconv.Atoi(m[2])
		assert.GreaterOrEqual(t, jsonSize, 2048)
		assert.Less(t, stored, jsonSize)
	})

	t.Run("host-3 expired no earlier than its TTL", func(t *testing.T) {
		m := regexp.MustCompile(`host-3 expired (\d+\.\d)s after it registered`).FindStringSubmatch(out.String())
		require.NotNil(t, m)
		after, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		assert.GreaterOrEqual(t, after, hostTTL.Seconds())
	})

	t.Run("etcd holds what the story says it wrote", func(t *testing.T) {
		db, err := storage.NewGetOp[*Database](client, databaseKey("orders")).Exec(t.Context())
		require.NoError(t, err)
		assert.Equal(t, int64(3), db.Version())
		assert.Equal(t, "host-1", db.Host)
		assert.Equal(t, 20, db.SizeGB)

		window, err := storage.NewGetOp[*Maintenance](client, maintenanceKey("host-2")).Exec(t.Context())
		require.NoError(t, err)
		assert.Equal(t, "disk replacement", window.Reason, "the stale copy overwrote the re-created window")

		inv, err := storage.NewGetOp[*Inventory](client, inventoryKey("host-1")).Exec(t.Context())
		require.NoError(t, err)
		assert.Equal(t, 2, inv.Used)
	})
}

func TestRun(t *testing.T) {
	t.Parallel()

	t.Run("with --endpoints it cleans /demo/ first and leaves other keys alone", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t)
		_, err := client.Put(t.Context(), "/demo/left-over", "x")
		require.NoError(t, err)
		_, err = client.Put(t.Context(), "/demox/keep", "x")
		require.NoError(t, err)

		var out bytes.Buffer
		cfg := config{endpoints: client.Endpoints(), dialTimeout: 5 * time.Second}
		require.NoError(t, run(t.Context(), cfg, &out))
		t.Logf("output:\n%s", out.String())

		assert.Contains(t, out.String(), "removed 1 key left under /demo/ by an earlier run")
		assert.Contains(t, out.String(), "story told in")
		resp, err := client.Get(t.Context(), "/demo/left-over")
		require.NoError(t, err)
		assert.Empty(t, resp.Kvs)
		resp, err = client.Get(t.Context(), "/demox/keep")
		require.NoError(t, err)
		assert.Len(t, resp.Kvs, 1)
	})

	t.Run("--serve keeps the embedded etcd until the context ends", func(t *testing.T) {
		t.Parallel()
		out := &watchedBuffer{want: "get --prefix /demo/", found: make(chan struct{})}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- run(ctx, config{serve: true}, out) }()

		select {
		case <-out.found:
		case err := <-done:
			t.Fatalf("run returned before serving: %v\n%s", err, out.String())
		case <-time.After(30 * time.Second):
			t.Fatalf("no serve hint after 30s:\n%s", out.String())
		}
		m := regexp.MustCompile(`etcd keeps running at (\S+) until Ctrl-C`).FindStringSubmatch(out.String())
		require.NotNil(t, m, out.String())
		assert.Contains(t, out.String(), "storagectl --endpoints "+m[1]+" get --prefix /demo/")
		assert.Contains(t, out.String(), "etcdctl --endpoints "+m[1]+" get --prefix /demo/")

		client, err := clientv3.New(clientv3.Config{Endpoints: []string{m[1]}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		require.NoError(t, err)
		resp, err := client.Get(t.Context(), databaseKey("orders"))
		require.NoError(t, client.Close())
		require.NoError(t, err)
		assert.Len(t, resp.Kvs, 1, "the served etcd has no database record")

		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("run did not return after its context ended")
		}
		assert.Contains(t, out.String(), "stopping etcd and removing its data")
	})

	t.Run("--metrics-addr serves /metrics over HTTP and prints a few series after the story", func(t *testing.T) {
		t.Parallel()
		out := &watchedBuffer{want: "get --prefix /demo/", found: make(chan struct{})}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- run(ctx, config{serve: true, metricsAddr: "127.0.0.1:0"}, out) }()
		select {
		case <-out.found:
		case err := <-done:
			t.Fatalf("run returned before serving: %v\n%s", err, out.String())
		case <-time.After(30 * time.Second):
			t.Fatalf("no serve hint after 30s:\n%s", out.String())
		}
		assert.Regexp(t, `some of the series at http://\S+/metrics:\n  storage_`, out.String())
		assert.Contains(t, out.String(), `storage_operations_total{op="txn",outcome="constraint_violated"}`)

		m := regexp.MustCompile(`metrics at (http://\S+/metrics)`).FindStringSubmatch(out.String())
		require.NotNil(t, m, out.String())
		body := scrape(t, m[1])
		for _, series := range []string{
			// Other runs of the demo in this process count too: the
			// observers are process-wide, so only the series are claimed.
			`storage_operations_total{op="create",outcome="already_exists"} `,
			`storage_watch_events_total{source="watch"} `,
			`storage_watch_restarts_total{reason="relist"} `,
			`storage_watch_stopped_total{reason="closed"} `,
			`storage_operation_duration_seconds_bucket{op="put",le="0.00064"} `,
			`storage_lease_grants_total `,
		} {
			assert.Contains(t, body, series)
		}

		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("run did not return after its context ended")
		}
	})

	t.Run("--serve with --endpoints is refused", func(t *testing.T) {
		t.Parallel()
		err := run(t.Context(), config{endpoints: []string{"http://127.0.0.1:1"}, serve: true}, &bytes.Buffer{})
		require.ErrorContains(t, err, "--serve")
	})
}

// scrape GETs url, as Prometheus does, and returns the body.
func scrape(t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	require.NoError(t, err)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // no idle connection left for goleak
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// watchedBuffer is a buffer safe for concurrent use that closes found once
// its contents include want.
type watchedBuffer struct {
	want  string
	found chan struct{}

	mu   sync.Mutex // protects the following fields
	buf  bytes.Buffer
	seen bool
}

func (b *watchedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if !b.seen && strings.Contains(b.buf.String(), b.want) {
		b.seen = true
		close(b.found)
	}
	return n, err
}

func (b *watchedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
