// Command storage-demo tells a short control-plane story with the storage
// library: hosts that register with TTL heartbeats, a cache and a
// subscription of it that follow them, versioned creates and updates, ABA
// safety, a transaction that fails and is committed again after a refresh, a
// compressed large value, and a host whose key expires.
//
// With no flags it runs against an etcd embedded in the process, with its
// data in a temporary directory that is removed at exit:
//
//	go run ./cmd/storage-demo
//
// --endpoints runs it against a running cluster instead (it first deletes
// everything under /demo/ there). --serve keeps the embedded etcd running
// after the story, so its keys can be inspected, until Ctrl-C.
// --metrics-addr serves the library's Prometheus series at
// http://ADDR/metrics (storageprom) and prints a few of them at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/storage/storagetest"
)

// storyTimeout bounds the story: it takes about four seconds, and without a
// bound an unreachable cluster would make it wait forever.
const storyTimeout = time.Minute

// config is what the flags ask for.
type config struct {
	endpoints   []string // empty: start an embedded etcd
	serve       bool     // keep the embedded etcd running after the story
	metricsAddr string   // "": no metrics; else serve them at http://metricsAddr/metrics
	dialTimeout time.Duration
}

func main() {
	var cfg config
	var endpoints string
	flag.StringVar(&endpoints, "endpoints", "", "comma-separated client URLs of a running etcd cluster (default: start an embedded etcd)")
	flag.BoolVar(&cfg.serve, "serve", false, "keep the embedded etcd running after the story, until Ctrl-C")
	flag.StringVar(&cfg.metricsAddr, "metrics-addr", "", "serve the storage metrics at http://ADDR/metrics, e.g. 127.0.0.1:9090 (default: none)")
	flag.DurationVar(&cfg.dialTimeout, "dial-timeout", 5*time.Second, "how long to wait for a running cluster to answer")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: storage-demo [--endpoints URL,URL] [--serve] [--metrics-addr ADDR]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if endpoints != "" {
		cfg.endpoints = strings.Split(endpoints, ",")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "storage-demo:", err)
		stop()
		os.Exit(1)
	}
}

// run connects to etcd as cfg says, tells the story, and with cfg.serve
// waits for ctx to end before it stops the embedded etcd. With
// cfg.metricsAddr it serves the storage metrics meanwhile and prints a few
// series after the story.
func run(ctx context.Context, cfg config, out io.Writer) error {
	if len(cfg.endpoints) > 0 && cfg.serve {
		return errors.New("--serve keeps the embedded etcd running; it does not apply with --endpoints")
	}
	var metrics *metricsServer // nil without --metrics-addr
	if cfg.metricsAddr != "" {
		m, err := serveMetrics(cfg.metricsAddr)
		if err != nil {
			return err
		}
		defer m.close()
		fmt.Fprintf(out, "metrics at %s\n", m.url)
		metrics = m
	}
	if len(cfg.endpoints) > 0 {
		return runExternal(ctx, cfg, out, metrics)
	}

	server, err := storagetest.Start()
	if err != nil {
		return err
	}
	defer server.Close()
	endpoint := strings.Join(server.Endpoints(), ",")
	fmt.Fprintf(out, "embedded etcd at %s, data in a temporary directory\n", endpoint)
	if err := tell(ctx, server.Client(), out, metrics); err != nil {
		return err
	}
	if !cfg.serve {
		return nil
	}

	fmt.Fprintf(out, "\netcd keeps running at %s until Ctrl-C (the host keys expire in seconds: their heartbeats ended with the story).\n", endpoint)
	fmt.Fprintf(out, "Inspect the keys with storagectl (go install ./cmd/storagectl), which decodes compressed values:\n")
	fmt.Fprintf(out, "  storagectl --endpoints %s get --prefix /demo/\n", endpoint)
	fmt.Fprintf(out, "or with etcdctl, which shows compressed values as raw gzip bytes:\n")
	fmt.Fprintf(out, "  etcdctl --endpoints %s get --prefix /demo/\n", endpoint)
	<-ctx.Done()
	fmt.Fprintf(out, "stopping etcd and removing its data\n")
	return nil
}

// runExternal tells the story against a running cluster.
func runExternal(ctx context.Context, cfg config, out io.Writer, metrics *metricsServer) error {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.endpoints,
		DialTimeout: cfg.dialTimeout,
		Logger:      zap.NewNop(), // clientv3 logs to stderr at info level by default
	})
	if err != nil {
		return fmt.Errorf("connect to etcd at %v: %w", cfg.endpoints, err)
	}
	defer client.Close()

	// clientv3.New does not wait for a connection: ask for the cluster's
	// revision, so that an unreachable cluster fails here, within the
	// dial timeout, instead of at the story's first step.
	pingCtx, cancel := context.WithTimeout(ctx, cfg.dialTimeout)
	defer cancel()
	if _, err := client.Get(pingCtx, "/demo/", clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd at %v did not answer within %v: %w", cfg.endpoints, cfg.dialTimeout, err)
	}
	fmt.Fprintf(out, "etcd at %s\n", strings.Join(cfg.endpoints, ","))
	return tell(ctx, client, out, metrics)
}

// tell runs the story within storyTimeout, then prints a few series of
// metrics unless it is nil.
func tell(ctx context.Context, client *clientv3.Client, out io.Writer, metrics *metricsServer) error {
	ctx, cancel := context.WithTimeout(ctx, storyTimeout)
	defer cancel()
	start := time.Now()
	if err := story(ctx, client, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "story told in %.1fs\n", time.Since(start).Seconds())
	if metrics == nil {
		return nil
	}
	return metrics.printSeries(ctx, out)
}
