package storage_test

import (
	"fmt"
	"os"
	"testing"
)

// TestMain stops the examples' shared etcd (see exampleClient) after the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if exampleServer != nil {
		if err := exampleServer.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stop the examples' etcd:", err)
			code = 1
		}
	}
	os.Exit(code)
}
