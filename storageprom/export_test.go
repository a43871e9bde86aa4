package storageprom

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterTB registers on reg until tb ends. The observers are
// process-wide: a test undoes its registration so that the next one, on a
// fresh registry, counts only what it does.
func RegisterTB(tb testing.TB, reg prometheus.Registerer) {
	tb.Helper()
	unregister, err := register(reg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(unregister)
}
