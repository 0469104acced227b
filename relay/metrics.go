package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the relay's Prometheus collectors. Labels carry no ids and no
// secrets, so cardinality stays fixed.
type metrics struct {
	claimed        prometheus.Counter
	claimDuration  prometheus.Histogram
	completed      *prometheus.CounterVec // by resulting state/outcome
	fenced         prometheus.Counter
	dropped        prometheus.Counter
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
	retained       *prometheus.CounterVec // rows deleted by retention, by kind
}

// newMetrics creates the collectors, registered with reg unless it is nil.
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		claimed: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "intents_claimed_total",
			Help: "Intents leased for delivery.",
		}),
		claimDuration: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: "outbox_relay", Name: "claim_duration_seconds",
			Help:    "Time to claim one batch of intents.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		completed: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "intents_completed_total",
			Help: "Delivery attempts finished, by outcome (done, dead, retry, release).",
		}, []string{"outcome"}),
		fenced: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "completions_fenced_total",
			Help: "Results discarded because the intent's lease had passed to another relay.",
		}),
		dropped: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "completions_dropped_total",
			Help: "Results the database refused to record; their intents are delivered again after the lease.",
		}),
		leasesExpired: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "leases_expired_total",
			Help: "Intents taken back from a relay whose lease ran out.",
		}),
		calls: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "api_calls_total",
			Help: "TalkJS calls, by step (user, conversation, messages) and outcome.",
		}, []string{"step", "outcome"}),
		callDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "outbox_relay", Name: "api_call_duration_seconds",
			Help:    "TalkJS call latency by step.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"step"}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "intents_in_flight",
			Help: "Intents being delivered now.",
		}),
		ready: f.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "ready",
			Help: "1 when the relay can deliver (database reachable, credentials accepted).",
		}),
		paused: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "paused",
			Help: "1 while delivery is paused, by reason (auth, breaker, operator).",
		}, []string{"reason"}),
		liveRelays: f.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "live_relays",
			Help: "Relay processes with a recent heartbeat, this one included.",
		}),
		notifications: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "notifications_total",
			Help: "Wake-up notifications received.",
		}),
		listenerErrors: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "listener_reconnects_total",
			Help: "Times the LISTEN connection was lost and re-established.",
		}),
		dbErrors: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "database_errors_total",
			Help: "Failed database operations, by operation.",
		}, []string{"op"}),
		retained: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "retention_deleted_total",
			Help: "Rows deleted by retention, by kind (intents, keys, user_syncs, relays).",
		}, []string{"kind"}),
	}
	// Every reason present from the start, so an alert sees 0, not nothing.
	for _, reason := range []string{pauseAuth, pauseBreaker, pauseOperator} {
		m.paused.WithLabelValues(reason)
	}
	return m
}
