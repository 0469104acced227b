package relay

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// leaseSet is the intents this relay holds: claimed and not yet completed.
type leaseSet struct {
	mu   sync.Mutex
	jobs map[int64]*claimedIntent
}

func newLeaseSet() *leaseSet { return &leaseSet{jobs: map[int64]*claimedIntent{}} }

func (s *leaseSet) add(j *claimedIntent) {
	s.mu.Lock()
	s.jobs[j.id] = j
	s.mu.Unlock()
}

func (s *leaseSet) remove(j *claimedIntent) {
	s.mu.Lock()
	if s.jobs[j.id] == j {
		delete(s.jobs, j.id)
	}
	s.mu.Unlock()
}

func (s *leaseSet) snapshot() []*claimedIntent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*claimedIntent, 0, len(s.jobs))
	for _, j := range s.jobs {
		out = append(out, j)
	}
	return out
}

// leaseKeeper is the service that renews this relay's leases and its row
// in outbox.relays every Lease/3, sharing the rate limit among live
// relays, and again at once when a relay came or went. Nothing else runs
// here: the sweep (sweep.go) and retention (retention.go) have their own
// services, so however long they take, no renewal waits for them. Its
// goroutine owns the heartbeat's published rate; Relay.Start beats once
// before the services start.
type leaseKeeper struct {
	serviceEnv
	cfg     leaseKeeperConfig
	held    *leaseSet     // read: the leases to renew (the claimer adds, the completer removes)
	rate    *adaptiveRate // the adaptive limit, nil when there is none
	limiter rateLimiter   // the provider's limiter, nil when it has none
	writes  *atomic.Int64 // counts the heartbeats the database accepted
	startStop

	// beatMu serialises heartbeats; published is the rate the next one
	// publishes (0 before the first).
	beatMu    sync.Mutex
	published float64
	changed   chan struct{} // another relay came or went
	live      atomic.Int64  // live relays at the last heartbeat; 0 before the first
}

func newLeaseKeeper(env serviceEnv, cfg leaseKeeperConfig, held *leaseSet, rate *adaptiveRate, p any, writes *atomic.Int64) *leaseKeeper {
	k := &leaseKeeper{serviceEnv: env, cfg: cfg, held: held, rate: rate, writes: writes,
		changed: make(chan struct{}, 1), startStop: startStop{name: "lease keeper"}}
	if rl, ok := p.(rateLimiter); ok {
		k.limiter = rl
	}
	return k
}

// Start renews in the background until Stop.
func (k *leaseKeeper) Start(ctx context.Context) error { return k.start(ctx, k.loop) }

// Stop waits for the renewal under way (bounded by Lease/3) and stops.
func (k *leaseKeeper) Stop(ctx context.Context) error { return k.stop(ctx) }

func (k *leaseKeeper) loop(ctx context.Context) {
	renew := time.NewTicker(k.cfg.Interval)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			// Bounded, so a hung statement cannot hold up the next renewal.
			opCtx, cancel := context.WithTimeout(ctx, k.cfg.Interval)
			k.renewLeases(opCtx)
			k.beat(opCtx)
			cancel()
		case <-k.changed:
			// A relay came or went: share the rate limit again now.
			opCtx, cancel := context.WithTimeout(ctx, k.cfg.Interval)
			k.beat(opCtx)
			cancel()
		}
	}
}

// relaysChanged has the keeper beat at once (the listener heard a relay
// come or go; the sweeper counted a different number of live relays).
func (k *leaseKeeper) relaysChanged() {
	select {
	case k.changed <- struct{}{}:
	default: // a beat is already due
	}
}

// renewedRow is one row of renewLeases: an intent still ours, and
// whether its lease was extended (false: its row was locked).
type renewedRow struct {
	ID      int64
	Renewed bool
}

// renewLeases extends the leases of held intents. An intent whose renewal
// finds it no longer ours (another relay took it over after our lease
// expired) is cancelled, so no further call is made for it.
func (k *leaseKeeper) renewLeases(ctx context.Context) {
	jobs := k.held.snapshot()
	if len(jobs) == 0 {
		return
	}
	ids := make([]int64, len(jobs))
	tokens := make([]int64, len(jobs))
	for i, j := range jobs {
		ids[i], tokens[i] = j.id, j.token
	}
	start := time.Now()
	answers, err := k.q.renewLeases(ctx, renewParams{IDs: ids, Tokens: tokens, Lease: k.cfg.Lease})
	if err != nil {
		// Nothing is known about the rest: cancel nothing.
		k.setDB(false, "renew_leases", err)
		return
	}
	kept := make(map[int64]bool, len(jobs))    // still ours
	renewed := make(map[int64]bool, len(jobs)) // and extended
	for _, a := range answers {
		kept[a.ID], renewed[a.ID] = true, a.Renewed
	}
	k.setDB(true, "", nil)
	deadline := k.monotonic(start) + int64(k.cfg.Lease)
	for _, j := range jobs {
		switch {
		case renewed[j.id]:
			j.deadline.Store(deadline)
		case kept[j.id]:
			// Its row is locked right now (being completed, or by another
			// session): the lease runs on, and so does the call's deadline.
		default:
			// Completed meanwhile, or lost. Either way no more calls for it.
			j.deadline.Store(0)
			if j.cancel != nil {
				j.cancel()
			}
		}
	}
}

// beat records this relay as live, with the rate it found, and adjusts
// its share of the rate limit.
func (k *leaseKeeper) beat(ctx context.Context) {
	k.beatMu.Lock()
	defer k.beatMu.Unlock()
	hb, err := k.q.heartbeat(ctx, heartbeatParams{Relay: k.cfg.Name, LiveWithin: k.cfg.LiveWithin,
		Version: k.cfg.Version, Rate: k.published})
	if err != nil {
		k.setDB(false, "heartbeat", err)
		return
	}
	k.setDB(true, "", nil)
	k.writes.Add(1)
	live, others := hb.Live, hb.Others
	k.live.Store(int64(live))
	k.metrics.liveRelays.Set(float64(live))
	if k.rate != nil {
		k.published = k.rate.beat(k.cfg.RateLimit, live, others)
		return
	}
	if k.limiter != nil && k.cfg.RateLimit > 0 {
		share := k.cfg.RateLimit / float64(live)
		burst := max(1, k.cfg.RateBurst/live)
		k.limiter.SetRateLimit(share, burst)
		k.metrics.rate.Set(share)
		k.metrics.rateCeiling.Set(share)
	}
}

// liveWithin is how recent a relay's heartbeat must be for it to count as
// live (relayIsLive): the lease, three heartbeat intervals. A relay that
// crashed counts as live for a lease after its last heartbeat.
func (c Config) liveWithin() time.Duration { return c.Lease }

// deregister removes this relay from outbox.relays at shutdown, so the
// others take its share of the rate limit at once. The rows of relays that
// never got to do so are removed by retention.
func (r *Relay) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.q.forgetRelay(ctx, r.cfg.Name); err != nil {
		r.log.Warn("could not remove relay row", "error", err)
		return
	}
	if r.rate != nil {
		r.notifyRelays(ctx)
	}
}

// notifyRelays tells the other relays that this one came or went, so
// that they share the rate limit again at once. A lost notification costs
// them no more than waiting for their next heartbeat.
func (r *Relay) notifyRelays(ctx context.Context) {
	if err := r.q.relaysChanged(ctx); err != nil {
		r.log.Warn("could not tell the other relays to share the rate limit again", "error", err)
	}
}
