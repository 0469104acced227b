package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's Prometheus collectors. Labels carry no ids and no
// secrets, so cardinality stays fixed.
type metrics struct {
	claimed        prometheus.Counter
	claimDuration  prometheus.Histogram
	completed      *prometheus.CounterVec // by resulting state/outcome
	fenced         prometheus.Counter
	leasesExpired  prometheus.Counter
	calls          *prometheus.CounterVec   // by step and outcome
	callDuration   *prometheus.HistogramVec // by step
	inFlight       prometheus.Gauge
	ready          prometheus.Gauge
	paused         *prometheus.GaugeVec // by reason
	liveRelays     prometheus.Gauge
	notifications  prometheus.Counter
	listenerErrors prometheus.Counter
	dbErrors       *prometheus.CounterVec // by operation
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		claimed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "intents_claimed_total",
			Help: "Intents leased for delivery.",
		}),
		claimDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "outbox_relay", Name: "claim_duration_seconds",
			Help:    "Time to claim one batch of intents.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "intents_completed_total",
			Help: "Delivery attempts finished, by outcome (done, dead, retry, release).",
		}, []string{"outcome"}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "completions_fenced_total",
			Help: "Results discarded because the intent's lease had passed to another relay.",
		}),
		leasesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "leases_expired_total",
			Help: "Intents taken back from a relay whose lease ran out.",
		}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "api_calls_total",
			Help: "TalkJS calls, by step (user, conversation, messages) and outcome.",
		}, []string{"step", "outcome"}),
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "outbox_relay", Name: "api_call_duration_seconds",
			Help:    "TalkJS call latency by step.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"step"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "intents_in_flight",
			Help: "Intents being delivered now.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "ready",
			Help: "1 when the relay can deliver (database reachable, credentials accepted).",
		}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "paused",
			Help: "1 while delivery is paused, by reason (auth, breaker).",
		}, []string{"reason"}),
		liveRelays: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "live_relays",
			Help: "Relay processes with a recent heartbeat, this one included.",
		}),
		notifications: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "notifications_total",
			Help: "Wake-up notifications received.",
		}),
		listenerErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "listener_reconnects_total",
			Help: "Times the LISTEN connection was lost and re-established.",
		}),
		dbErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "database_errors_total",
			Help: "Failed database operations, by operation.",
		}, []string{"op"}),
	}
	if reg != nil {
		reg.MustRegister(m.claimed, m.claimDuration, m.completed, m.fenced, m.leasesExpired,
			m.calls, m.callDuration, m.inFlight, m.ready, m.paused, m.liveRelays,
			m.notifications, m.listenerErrors, m.dbErrors)
	}
	return m
}
