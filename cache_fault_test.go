package storage_test

// A cache under faults: a closed client, a cut connection, churn and
// compaction, a cancelled start context.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/internal/clustertest"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/tests/v3/framework/integration"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

func TestFaultCancelledStartContextFailsCacheReadsWithCanceled(t *testing.T) {
	clus := clustertest.New(t, &integration.ClusterConfig{Size: 3})
	ctx := testContext(t)
	const prefix = "/ctx/"
	put(t, clus.Client(1), prefix+"a", `{"name":"a"}`)

	t.Log("phase 1: a cache started with a cancellable context serves reads")
	startCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := storage.NewCache(clus.Client(0), prefix, func(h *host) string { return prefix + h.Name })
	require.NoError(t, c.Start(startCtx))
	t.Cleanup(c.Stop)
	_, err := c.Get(prefix + "a").Exec(ctx)
	require.NoError(t, err)

	t.Log("phase 2: cancel Start's context")
	cancel()
	require.ErrorIs(t, nextError(t, c.Error(), "cache"), context.Canceled)
	_, err = c.Get(prefix + "a").Exec(ctx)
	require.ErrorIs(t, err, context.Canceled)
	_, err = c.GetPrefix("").Exec(ctx)
	require.ErrorIs(t, err, context.Canceled)
}

func TestCacheStopsOnAClosedClient(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	ctx := testContext(t)
	cacheClient := newExtraClient(t, s, clientv3.Config{DialTimeout: 5 * time.Second})
	put(t, s.Client(), "/life/a", rawHostJSON("life/a", 1))
	c := startCache(ctx, t, cacheClient, "/life", keyOfHost)
	_, err := c.Get("/life/a").Exec(ctx)
	require.NoError(t, err)

	require.NoError(t, cacheClient.Close())
	err = nextError(t, c.Error())
	t.Logf("Error(): %v", err)
	_, readErr := c.Get("/life/a").Exec(ctx)
	require.ErrorIs(t, readErr, err, "reads do not fail with the watch's error")
	require.NotErrorIs(t, readErr, storage.ErrNotFound)
	_, readErr = c.GetPrefix("").Exec(ctx)
	require.ErrorIs(t, readErr, err)
	requireNoMoreErrors(t, c.Error())
	require.LessOrEqual(t, storage.CacheRecovery(c).Resumes, int64(2), "the watch retried a closed client")
	// Stop runs in cleanup; verifyNoLeaks then checks that the cache's
	// goroutines are gone.
}

// cutProxy forwards TCP connections to a target until cut: then it drops
// every connection and refuses new ones until it is restored. A client
// behind it loses its watch while etcd goes on.
type cutProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup // the accept loop and every copier

	mu    sync.Mutex // protects the following fields
	cut   bool
	conns map[net.Conn]struct{}
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.accept()
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) endpoint() string { return "http://" + p.ln.Addr().String() }

// cutProxyClientConfig is the configuration of a client that reaches etcd
// through p.
func cutProxyClientConfig(p *cutProxy) clientv3.Config {
	return clientv3.Config{
		Endpoints:   []string{p.endpoint()},
		DialTimeout: 5 * time.Second,
		// Reconnect quickly once the proxy is restored (gRPC's default
		// first backoff is a second, growing to two minutes).
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	}
}

func (p *cutProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return // the listener is closed
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			_ = in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

// pipe copies src to dst until either ends, then closes both.
func (p *cutProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for conn := range p.conns {
			_ = conn.Close()
		}
	}
}

// churnConv runs rounds of transactions over keys under /conv/: puts that create
// or modify, deletes, and re-creates of keys deleted in an earlier round.
func churnConv(ctx context.Context, t *testing.T, client *clientv3.Client, rng *rand.Rand, rounds int) {
	t.Helper()
	const keys = 40
	for range rounds {
		var ops []clientv3.Op
		for i := range keys {
			name := fmt.Sprintf("conv/k%02d", i)
			switch rng.IntN(4) {
			case 0:
				ops = append(ops, clientv3.OpDelete(storage.Key(name)))
			case 1, 2:
				ops = append(ops, clientv3.OpPut(storage.Key(name), rawHostJSON(name, rng.IntN(1000))))
			}
		}
		_, err := client.Txn(ctx).Then(ops...).Commit()
		require.NoError(t, err)
	}
}

func TestCacheConvergesAfterChurnAndCompaction(t *testing.T) {
	verifyNoLeaks(t)
	s := newServer(t)
	client := s.Client()
	ctx := testContext(t)
	p := newCutProxy(t, strings.TrimPrefix(s.Endpoints()[0], "http://"))
	cacheClient := newExtraClient(t, s, cutProxyClientConfig(p))
	rng := rand.New(rand.NewPCG(1, 2))

	t.Log("phase 1: churn while the cache watches")
	churnConv(ctx, t, client, rng, 5)
	c := startCache(ctx, t, cacheClient, "/conv", keyOfHost)
	churnConv(ctx, t, client, rng, 20)
	requireCacheMatchesEtcd(ctx, t, c, client, "/conv")
	require.Zero(t, storage.CacheRecovery(c).Relists)

	t.Log("phase 2: cut the cache off; churn, delete and re-create; compact past its watch")
	p.setCut(true)
	churnConv(ctx, t, client, rng, 20)
	_, err := client.Delete(ctx, "/conv/k00")
	require.NoError(t, err)
	put(t, client, "/conv/k00", rawHostJSON("conv/k00", 1000)) // re-created: version 1
	_, err = client.Delete(ctx, "/conv/k01")
	require.NoError(t, err)
	rev := put(t, client, "/conv/new", rawHostJSON("conv/new", 1))
	_, err = client.Compact(ctx, rev, clientv3.WithCompactPhysical())
	require.NoError(t, err)

	t.Log("phase 3: restore the connection; the cache re-reads and converges")
	p.setCut(false)
	requireCacheMatchesEtcd(ctx, t, c, client, "/conv")
	require.NotZero(t, storage.CacheRecovery(c).Relists, "the cache never re-read after the compaction")

	t.Log("phase 4: the watch goes on after the re-read")
	churnConv(ctx, t, client, rng, 20)
	_, err = client.Compact(ctx, put(t, client, "/conv/last", rawHostJSON("conv/last", 1)))
	require.NoError(t, err)
	requireCacheMatchesEtcd(ctx, t, c, client, "/conv")
	select {
	case err := <-c.Error():
		t.Fatalf("the cache reported an error: %v", err)
	default:
	}
}
