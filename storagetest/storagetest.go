package storagetest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

const (
	// readyTimeout bounds the wait for the member to join its one-member
	// cluster. It is ready in tens of milliseconds on a quiet machine; the
	// margin is for loaded CI runners under -race.
	readyTimeout = 30 * time.Second

	// dialTimeout bounds clientv3's first connection to the member.
	dialTimeout = 5 * time.Second

	// tickMs and electionMs are ten times shorter than etcd's defaults: a
	// single member elects itself after one election timeout, so this cuts
	// start-up from ~200 ms to ~25 ms. etcd requires electionMs >= 5*tickMs.
	tickMs     = 10
	electionMs = 100

	// anyLocalPort lets the kernel pick a free port, so servers started in
	// parallel never collide.
	anyLocalPort = "http://127.0.0.1:0"
)

// Option configures a server started by [New] or [Start].
type Option func(*options)

// options collects what the Options ask for; each func runs in the order given.
type options struct {
	server []func(*embed.Config)
	client []func(*clientv3.Config)
}

// WithServerConfig calls f on the server's embed.Config after storagetest has
// filled in its defaults (data dir, name, loopback URLs on port 0, fast ticks,
// a no-op logger) and before the server starts. Use it for limits such as
// MaxTxnOps, MaxRequestBytes or WatchProgressNotifyInterval. f must not change
// the data dir, the name, or the URLs' hosts and ports: [Server] relies on
// them. f may serve clients over TLS (the client URLs' scheme set to https,
// and ClientTLSInfo): [Server.Endpoints] then say https, and the client made
// at start needs a TLS config from [WithClientConfig]. To see etcd's
// logs while debugging, set ZapLoggerBuilder, e.g. to
// embed.NewZapLoggerBuilder(zaptest.NewLogger(t)).
//
// The embedded server reads WatchProgressNotifyInterval only. etcd v3.6
// also has the deprecated ExperimentalWatchProgressNotifyInterval, which
// etcd's command line alone copies into it, so setting it here has no
// effect; v3.7 removed it.
func WithServerConfig(f func(*embed.Config)) Option {
	return func(o *options) { o.server = append(o.server, f) }
}

// WithClientConfig calls f on the clientv3.Config of the client made at start
// (the one [New] returns and [Server.Client] gives) after storagetest has set
// Endpoints, DialTimeout and a no-op Logger. If f empties Endpoints or Logger
// they are set again. It does not affect clients made by [Server.NewClient].
func WithClientConfig(f func(*clientv3.Config)) Option {
	return func(o *options) { o.client = append(o.client, f) }
}

// New starts a single-member etcd server for t and returns a client connected
// to it. The test fails at once (t.Fatal) if the server does not start.
//
// New registers a cleanup with t that closes the client, stops the server and
// removes its data directory; the caller need not close the client, though a
// test may close it early to see how code copes with a closed client. New keeps
// no state outside the server, so it may be called from parallel tests,
// subtests and benchmarks, and it runs under -short.
func New(t testing.TB, opts ...Option) *clientv3.Client {
	t.Helper()
	s, err := Start(opts...)
	if err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("storagetest: %v", err)
		}
	})
	return s.Client()
}

// Server is a single-member etcd server running in this process, with its
// data in a temporary directory, and a client connected to it. Its methods are
// safe for concurrent use.
type Server struct {
	// Set once by Start.
	etcd      *embed.Etcd
	dir       string
	endpoints []string
	client    *clientv3.Client

	closeOnce sync.Once
	closeErr  error // set inside closeOnce, read after it
}

// Start is [New] for code without a testing.TB, such as examples, TestMain or
// a demo: it starts a single-member etcd server in a new temporary directory
// and connects a client to it. The caller must call [Server.Close], which
// also closes the client.
//
// Start waits up to 30 seconds for the server to be ready, then for the
// client's first answer within its DialTimeout (5 seconds unless
// [WithClientConfig] changes it). On any error the server is stopped and its
// directory removed before Start returns.
func Start(opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}

	dir, err := os.MkdirTemp("", "storagetest-")
	if err != nil {
		return nil, fmt.Errorf("start etcd: create data dir: %w", err)
	}
	e, endpoint, err := startEtcd(dir, o.server)
	if err != nil {
		return nil, errors.Join(err, removeDir(dir))
	}
	s := &Server{etcd: e, dir: dir, endpoints: []string{endpoint}}

	cfg := s.clientConfig(clientv3.Config{DialTimeout: dialTimeout})
	for _, f := range o.client {
		f(&cfg)
	}
	s.client, err = s.NewClient(cfg)
	if err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := probe(s.client, cfg); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// probe waits for the client's first answer, within its DialTimeout.
// clientv3.New does not wait for a connection, and from etcd 3.7 on
// DialTimeout does not bound one either: without a probe, a client
// configuration that cannot reach the server (wrong endpoints or TLS from
// WithClientConfig) would surface as a hanging first request in the test.
func probe(client *clientv3.Client, cfg clientv3.Config) error {
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = dialTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := client.Get(ctx, "storagetest-probe", clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("start etcd: client cannot reach it at %v within %v: %w", cfg.Endpoints, timeout, err)
	}
	return nil
}

// startEtcd starts an embedded etcd keeping its data in dir and returns it
// and its client URL once it serves clients. On error nothing is left
// running; dir is the caller's to remove.
func startEtcd(dir string, configure []func(*embed.Config)) (*embed.Etcd, string, error) {
	local, err := url.Parse(anyLocalPort)
	if err != nil {
		return nil, "", fmt.Errorf("start etcd: parse %s: %w", anyLocalPort, err)
	}

	cfg := embed.NewConfig()
	cfg.Dir = dir
	// The temp dir's name is unique, so the member name is too; it shows in
	// etcd's errors when several servers run at once. etcd derives the member
	// and cluster IDs from the peer URLs and the cluster token: every server
	// here has the same peer URL (port 0), so a unique token is what keeps
	// their IDs apart.
	cfg.Name = filepath.Base(dir)
	cfg.InitialClusterToken = cfg.Name
	cfg.ListenClientUrls = []url.URL{*local}
	cfg.AdvertiseClientUrls = []url.URL{*local}
	cfg.ListenPeerUrls = []url.URL{*local}
	cfg.AdvertisePeerUrls = []url.URL{*local}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs = tickMs
	cfg.ElectionMs = electionMs
	// Without a builder etcd logs at info level to stderr, including a
	// "mux: server closed" error on every Close.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	for _, f := range configure {
		f(cfg)
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		// StartEtcd closes whatever it started before returning an error.
		return nil, "", fmt.Errorf("start etcd in %s: %w", dir, err)
	}
	// The scheme is the configured one (https when f set up TLS); the port
	// is the one the listener got.
	endpoint := cfg.ListenClientUrls[0].Scheme + "://" + e.Clients[0].Addr().String()

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return e, endpoint, nil
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("start etcd in %s: serve: %w", dir, err)
	case <-timer.C:
		e.Close()
		return nil, "", fmt.Errorf("start etcd in %s: not ready after %v", dir, readyTimeout)
	}
}

// Client returns the client made at start. [Server.Close] closes it; callers
// must not.
func (s *Server) Client() *clientv3.Client {
	return s.client
}

// Endpoints returns the server's client URLs, such as
// "http://127.0.0.1:43125". The slice is the caller's to modify.
//
// The member advertises port 0 to the cluster, since its real port is known
// only once it listens: do not let clients sync their endpoints from the
// member list (clientv3.Config.AutoSyncInterval, Client.Sync).
func (s *Server) Endpoints() []string {
	return append([]string(nil), s.endpoints...)
}

// NewClient returns a new client for the server made from cfg. If
// cfg.Endpoints is empty it is set to [Server.Endpoints]; if cfg.Logger is
// nil it is set to a no-op logger. Options given to [New] or [Start] do not
// apply. The caller must close the client, before or after [Server.Close].
func (s *Server) NewClient(cfg clientv3.Config) (*clientv3.Client, error) {
	c, err := clientv3.New(s.clientConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("connect to etcd at %v: %w", s.endpoints, err)
	}
	return c, nil
}

// clientConfig returns cfg with empty Endpoints and Logger filled in.
func (s *Server) clientConfig(cfg clientv3.Config) clientv3.Config {
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = s.Endpoints()
	}
	if cfg.Logger == nil {
		// clientv3 builds an info-level logger to stderr when none is given.
		cfg.Logger = zap.NewNop()
	}
	return cfg
}

// Close closes the client made at start, stops the server, and removes its
// data directory. It returns once the server's goroutines have exited. Clients
// from [Server.NewClient] are not closed: their calls fail once the server is
// gone. Close is idempotent and safe to call concurrently; every call returns
// the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	var errs []error
	if s.client != nil {
		// A second Close of a clientv3.Client reports context.Canceled. A
		// test may close Client() on purpose, to see how code copes with a
		// closed client: that is not a failure of the server.
		if err := s.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("close etcd client: %w", err))
		}
	}
	// Close blocks until the server and its listeners have stopped.
	s.etcd.Close()
	errs = append(errs, removeDir(s.dir))
	return errors.Join(errs...)
}

func removeDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove etcd data dir: %w", err)
	}
	return nil
}
