package storageprom_test

// Helpers of the adapter's tests: the test value, a cluster, and readers of
// what a registry gathers.

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storageprom"
)

type host struct {
	storage.StoredValue
	Name string `json:"name"`
}

// waitTimeout bounds every wait for something the library must do; a
// passing test never waits it out.
const waitTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// freshRegistry returns a registry the adapter reports into until t ends.
func freshRegistry(t testing.TB) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	storageprom.RegisterTB(t, reg)
	return reg
}

// series is one gathered sample: its labels ("name=value" pairs, sorted)
// and its value (a histogram's sample count).
type series map[string]float64

// gather returns the samples of the family name, by labels, as
// "op=put,outcome=ok"; a family with no sample is empty.
func gather(t testing.TB, reg *prometheus.Registry, name string) series {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	out := series{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			slices.Sort(labels)
			var v float64
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				v = float64(m.GetHistogram().GetSampleCount())
			}
			out[strings.Join(labels, ",")] = v
		}
	}
	return out
}

// nonZero drops the samples that are 0: the label sets the adapter makes
// at once.
func (s series) nonZero() series {
	out := series{}
	for k, v := range s {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}
