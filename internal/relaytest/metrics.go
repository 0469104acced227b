package relaytest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metric returns the sum of the counter, gauge or untyped samples of the
// metric name gathered from g whose labels include the given name/value
// pairs (all of its series when none are given), and whether any matched.
// Tests read a relay in the same process through its registry, and a relay
// process through TextGatherer of its /metrics.
func Metric(tb testing.TB, g prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	tb.Helper()
	var sum float64
	found := false
	for _, m := range series(tb, g, name, labels) {
		switch {
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		default:
			continue
		}
		found = true
	}
	return sum, found
}

// MetricValue is Metric, failing tb when no series matches.
func MetricValue(tb testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	tb.Helper()
	v, ok := Metric(tb, g, name, labels...)
	if !ok {
		tb.Fatalf("no metric %s%v", name, labels)
	}
	return v
}

// HistogramCount returns the number of observations of the histogram name
// gathered from g, over the series whose labels include the given pairs.
func HistogramCount(tb testing.TB, g prometheus.Gatherer, name string, labels ...string) uint64 {
	tb.Helper()
	var n uint64
	for _, m := range series(tb, g, name, labels) {
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// TextGatherer gathers from a Prometheus text exposition (what a process
// serves on /metrics), parsed by the Prometheus parser. Text that does not
// parse is an error of the Gather.
func TextGatherer(text string) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		p := expfmt.NewTextParser(model.UTF8Validation)
		byName, err := p.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			return nil, err
		}
		out := make([]*dto.MetricFamily, 0, len(byName))
		for _, mf := range byName {
			out = append(out, mf)
		}
		return out, nil
	})
}

// series returns the series of name in g whose labels include pairs.
func series(tb testing.TB, g prometheus.Gatherer, name string, pairs []string) []*dto.Metric {
	tb.Helper()
	if len(pairs)%2 != 0 {
		tb.Fatalf("metric %s: labels %q are not name/value pairs", name, pairs)
	}
	mfs, err := g.Gather()
	if err != nil {
		tb.Fatalf("gather metrics: %v", err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, pairs) {
				out = append(out, m)
			}
		}
	}
	return out
}

func hasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}
