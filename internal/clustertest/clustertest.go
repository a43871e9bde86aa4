// Package clustertest starts multi-member etcd clusters for the tests of
// this module, with etcd's integration framework.
//
// It exists so that every test package starts clusters the same way: the
// framework skips a test silently in several situations, and its own
// goroutine-leak detection skips a test when a goroutine predates it.
package clustertest

import (
	"testing"

	"go.etcd.io/etcd/tests/v3/framework/integration"
	"go.uber.org/goleak"
)

// New starts a cluster of etcd's integration framework and terminates it
// when the test ends. The goroutine-leak check is registered before the
// cluster, so it runs after Terminate (cleanups run last-in, first-out), and
// the framework's own leak detection is off. Call it once per top-level
// test, never from a parallel test: BeforeTest sets process-wide state.
func New(t *testing.T, cfg *integration.ClusterConfig) *integration.Cluster {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	integration.BeforeTest(t, integration.WithoutGoLeakDetection())
	clus := integration.NewCluster(t, cfg)
	t.Cleanup(func() { clus.Terminate(t) })
	return clus
}
