// Package storagetest runs a real, single-member etcd server inside the test
// process, so code built on etcd can be tested without installing anything:
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		client := storagetest.New(t) // closed, with its server, when t ends
//		_, err := client.Put(t.Context(), "k", "v")
//		...
//	}
//
// Each call starts its own server on free loopback ports with its data in a new
// temporary directory, and quiet logs. Nothing is shared between servers and
// the package keeps no global state, so tests using it may run in parallel,
// under -short, and in benchmarks. Use [Start] where there is no testing.TB,
// for example in TestMain or an Example, and call [Server.Close] when done.
//
// To check for leaked goroutines with go.uber.org/goleak, register the check
// before calling New: cleanups run last-registered first, so it then runs
// after the server has stopped.
//
//	ignore := goleak.IgnoreCurrent()
//	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
//	client := storagetest.New(t)
package storagetest
