package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/etcdkit/storage/storageprom"
)

// metricsServer serves the storage series of the process at /metrics.
type metricsServer struct {
	url   string // http://ADDR/metrics
	srv   *http.Server
	donec chan struct{} // closed when Serve has returned
}

// serveMetrics registers the storage series on a registry of its own and
// serves it at http://addr/metrics, in a goroutine that close ends.
func serveMetrics(addr string) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	if err := storageprom.Register(reg); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{url: "http://" + ln.Addr().String() + "/metrics",
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, donec: make(chan struct{})}
	go func() {
		defer close(m.donec)
		_ = m.srv.Serve(ln) // returns http.ErrServerClosed once close is called
	}()
	return m, nil
}

// close stops serving and returns once the server's goroutine has exited.
func (m *metricsServer) close() {
	_ = m.srv.Close()
	<-m.donec
}

// shownSeries are the families the demo prints at the end of its story.
var shownSeries = []string{"storage_operations_total", "storage_watch_events_total", "storage_lease_grants_total"}

// printSeries scrapes the demo's own /metrics, as Prometheus would, and
// prints the samples of shownSeries.
func (m *metricsServer) printSeries(ctx context.Context, out io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	if err != nil {
		return err
	}
	// No keep-alive: no idle connection outlives the scrape.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("scrape %s: %w", m.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape %s: %s", m.url, resp.Status)
	}
	fmt.Fprintf(out, "\nsome of the series at %s:\n", m.url)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range shownSeries {
			if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
				fmt.Fprintf(out, "  %s\n", line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("scrape %s: %w", m.url, err)
	}
	return nil
}
