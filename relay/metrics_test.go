package relay_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// A scripted run, read back through the registry: 20 intents delivered and
// one refused by TalkJS (dead), inserted while the relay waits, so a
// NOTIFY wakes it.
func TestMetricsAfterScriptedRun(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{RejectUserIDs: []string{"buyer-metrics-bad"}})
	reg := prometheus.NewRegistry()
	cfg := testConfig("metrics")
	cfg.Registerer = reg
	cfg.PollInterval = time.Minute // wake-ups come from NOTIFY and freed slots
	r := b.startRelay(t, cfg, testSecret)
	ctx := t.Context()
	waitFor(t, 10*time.Second, "the relay to wait for a NOTIFY", func() bool {
		var waiting bool
		err := b.pool.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting)
		return err == nil && waiting && r.Health().Listening
	})
	var intents []outbox.Intent
	for i := range 20 {
		intents = append(intents, orderIntent(fmt.Sprintf("metrics-%d", i), i))
	}
	b.insertSQL(t, append(append([]outbox.Intent{}, intents...), orderIntent("metrics-bad", 99)))
	c := b.waitSettled(t, 30*time.Second)
	if c["done"] != 20 || c["dead"] != 1 {
		t.Fatalf("states = %v, want 20 done and 1 dead", c)
	}
	waitFor(t, 10*time.Second, "every result to be counted", func() bool {
		done, _ := relaytest.Metric(t, reg, "outbox_relay_intents_completed_total", "outcome", "done")
		dead, _ := relaytest.Metric(t, reg, "outbox_relay_intents_completed_total", "outcome", "dead")
		return done == 20 && dead == 1
	})
	r.RefreshGauges(ctx)

	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"outbox_relay_intents_claimed_total", nil, 21},
		{"outbox_relay_intents_completed_total", []string{"outcome", "dead"}, 1},
		{"outbox_relay_api_calls_total", []string{"step", "users", "outcome", "permanent"}, 1}, // the refused batch
		{"outbox_relay_api_calls_total", []string{"step", "conversation", "outcome", "ok"}, 20},
		{"outbox_relay_api_calls_total", []string{"step", "messages", "outcome", "ok"}, 20},
		{"outbox_relay_intents", []string{"state", "pending"}, 0},
		{"outbox_relay_intents", []string{"state", "delivering"}, 0},
		{"outbox_relay_intents", []string{"state", "dead"}, 1},
		{"outbox_relay_lag_seconds", nil, 0},
		{"outbox_relay_paused", []string{"reason", "operator"}, 0},
		{"outbox_relay_paused", []string{"reason", "breaker"}, 0},
		{"outbox_relay_rate_limit_waits_total", nil, 0},
		{"outbox_relay_retry_after_waits_total", nil, 0},
		{"outbox_relay_ready", nil, 1},
	} {
		if got := relaytest.MetricValue(t, reg, m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	if n := relaytest.HistogramCount(t, reg, "outbox_relay_delivery_latency_seconds"); n != 20 {
		t.Errorf("delivery latency observations = %d, want one per done intent (20)", n)
	}
	if sum := histogramSum(t, reg, "outbox_relay_claim_batch_size"); sum != 21 {
		t.Errorf("claim batch sizes sum to %v, want the 21 intents claimed", sum)
	}
	if v := relaytest.MetricValue(t, reg, "outbox_relay_wakeups_total", "source", "notify"); v < 1 {
		t.Errorf("wake-ups by NOTIFY = %v, want at least the insert's", v)
	}
	if v := relaytest.MetricValue(t, reg, "outbox_relay_wakeups_total", "source", "poll"); v != 0 {
		t.Errorf("wake-ups by poll = %v within a minute-long poll interval, want 0", v)
	}
}

// histogramSum returns the sum of the observations of histogram name.
func histogramSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var s float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				s += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return s
}

// describedNames registers with a registry and remembers the name of
// every metric described, labelled or not, used or not.
type describedNames struct {
	prometheus.Registerer
	names map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([a-z_:]+)"`)

func (d *describedNames) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 32)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return d.Registerer.Register(c)
}

func (d *describedNames) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

// Every metric the shipped alerts and dashboard query is one the relay
// exports, so a rename cannot silently blind them.
func TestAlertsAndDashboardUseRealMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	d := &describedNames{Registerer: prometheus.NewRegistry(), names: map[string]bool{}}
	cfg := testConfig("names")
	cfg.Registerer = d
	if _, err := relay.New(b.pool, b.client(t, testSecret), cfg); err != nil {
		t.Fatal(err)
	}
	if len(d.names) < 20 {
		t.Fatalf("only %d metric names described: %v", len(d.names), d.names)
	}

	alerts, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(alerts, &rules); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	var exprs []string
	alertNames := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("alerts.yml: a rule without alert or expr: %+v", r)
			}
			alertNames[r.Alert] = true
			exprs = append(exprs, r.Expr)
		}
	}
	for _, want := range []string{"OutboxRelayLagHigh", "OutboxRelayDeadLettersRising", "OutboxRelayPaused",
		"OutboxRelayNoLiveRelay", "OutboxRelayErrorRatioHigh"} {
		if !alertNames[want] {
			t.Errorf("alerts.yml lacks %s", want)
		}
	}
	// Each alert has its section in docs/operations.md.
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range alertNames {
		if !strings.Contains(string(ops), "### "+name) {
			t.Errorf("docs/operations.md has no section for %s", name)
		}
	}

	dash, err := os.ReadFile("../deploy/grafana/outbox-relay.json")
	if err != nil {
		t.Fatal(err)
	}
	var board struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &board); err != nil {
		t.Fatalf("grafana dashboard: %v", err)
	}
	for _, p := range board.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q queries nothing", p.Title)
		}
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}

	used := regexp.MustCompile(`outbox_relay_[a-z_]+`)
	seen := 0
	for _, e := range exprs {
		for _, name := range used.FindAllString(e, -1) {
			seen++
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if s, ok := strings.CutSuffix(name, suffix); ok && d.names[s] {
					base = s
				}
			}
			if !d.names[base] {
				t.Errorf("%s is queried by the alerts or dashboard but the relay exports no such metric", name)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("only %d metric references found: the parsing is off", seen)
	}
}
