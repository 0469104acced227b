package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/outbox-relay/outbox-relay/provider/ratecontrol"
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

	intents        *prometheus.GaugeVec // by state, from the database (gauges.go)
	lag            prometheus.Gauge
	latency        prometheus.Histogram   // insert to done
	claimBatch     prometheus.Histogram   // intents per claim
	wakeups        *prometheus.CounterVec // by source
	retryAfterWait prometheus.Counter     // calls held for a 429's Retry-After
	retryAfterSecs prometheus.Counter
	warnings       *prometheus.CounterVec // rate-limited warnings, by class (logwarn.go)
	rate           prometheus.Gauge       // the adaptive rate limit (rate.go)
	rateCeiling    prometheus.Gauge
	rateCuts       *prometheus.CounterVec // by cause
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
			Help: "TalkJS calls, by step (users: a batch users PUT; user, conversation, messages) and outcome.",
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
		rate: f.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "rate_limit",
			Help: "Requests per second this relay allows itself: the rate its adaptive limit found (0 when it has none).",
		}),
		rateCeiling: f.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "rate_limit_ceiling",
			Help: "This relay's share of OUTBOX_RATE_LIMIT, the most its adaptive limit may reach (0: no ceiling).",
		}),
		rateCuts: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "rate_limit_cuts_total",
			Help: "Cuts of the adaptive rate limit, by cause: 429 (TalkJS refused a call) or slow (answers slowing down).",
		}, []string{"cause"}),
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
			Help: "Rows deleted by retention, by kind (intents, keys, user_syncs, conversation_syncs, relays).",
		}, []string{"kind"}),
		intents: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "intents",
			Help: "Intents by state (pending, delivering, dead), read from the database every few seconds.",
		}, []string{"state"}),
		lag: f.NewGauge(prometheus.GaugeOpts{
			Namespace: "outbox_relay", Name: "lag_seconds",
			Help: "Age of the oldest intent a relay could claim now (outbox.lag), read every few seconds.",
		}),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: "outbox_relay", Name: "delivery_latency_seconds",
			Help:    "Time from an intent's insert to its delivery (done), on the database clock.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}),
		claimBatch: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: "outbox_relay", Name: "claim_batch_size",
			Help:    "Intents leased by one claim statement (0: it found nothing).",
			Buckets: []float64{0, 1, 2, 5, 10, 20, 50, 100, 200, 500},
		}),
		wakeups: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "wakeups_total",
			Help: "Times the claimer woke up, by source (notify: a producer's NOTIFY; poll: the poll interval; internal: a freed slot, a pause change, a reconnect).",
		}, []string{"source"}),
		retryAfterWait: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "retry_after_waits_total",
			Help: "Calls held back because TalkJS answered 429 with Retry-After.",
		}),
		retryAfterSecs: f.NewCounter(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "retry_after_wait_seconds_total",
			Help: "Time calls spent held back by a 429's Retry-After.",
		}),
		warnings: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "retryable_failures_total",
			Help: "Attempts that failed retryably (they back off and try again), by class.",
		}, []string{"class"}),
	}
	for _, s := range []string{"pending", "delivering", "dead"} {
		m.intents.WithLabelValues(s)
	}
	for _, s := range []string{"notify", "poll", "internal"} {
		m.wakeups.WithLabelValues(s)
	}
	// Every reason present from the start, so an alert sees 0, not nothing.
	for _, reason := range []string{pauseAuth, pauseBreaker, pauseOperator} {
		m.paused.WithLabelValues(reason)
	}
	for _, cause := range []string{ratecontrol.CauseRateLimited, ratecontrol.CauseSlow} {
		m.rateCuts.WithLabelValues(cause)
	}
	return m
}
