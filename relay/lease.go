package relay

import (
	"context"
	"sync"
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
// services, so however long they take, no renewal waits for them.
type leaseKeeper struct {
	r *Relay
	startStop
}

func newLeaseKeeper(r *Relay) *leaseKeeper {
	return &leaseKeeper{r: r, startStop: startStop{name: "lease keeper"}}
}

// Start renews in the background until Stop.
func (k *leaseKeeper) Start(ctx context.Context) error { return k.start(ctx, k.loop) }

// Stop waits for the renewal under way (bounded by Lease/3) and stops.
func (k *leaseKeeper) Stop(ctx context.Context) error { return k.stop(ctx) }

func (k *leaseKeeper) loop(ctx context.Context) {
	r := k.r
	renew := time.NewTicker(r.cfg.heartbeatInterval())
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			// Bounded, so a hung statement cannot hold up the next renewal.
			opCtx, cancel := context.WithTimeout(ctx, r.cfg.heartbeatInterval())
			r.renewLeases(opCtx)
			r.beat(opCtx)
			cancel()
		case <-r.relaysChanged:
			// A relay came or went: share the rate limit again now.
			opCtx, cancel := context.WithTimeout(ctx, r.cfg.heartbeatInterval())
			r.beat(opCtx)
			cancel()
		}
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
func (r *Relay) renewLeases(ctx context.Context) {
	jobs := r.held.snapshot()
	if len(jobs) == 0 {
		return
	}
	ids := make([]int64, len(jobs))
	tokens := make([]int64, len(jobs))
	for i, j := range jobs {
		ids[i], tokens[i] = j.id, j.token
	}
	start := time.Now()
	answers, err := r.q.renewLeases(ctx, renewParams{IDs: ids, Tokens: tokens, Lease: r.cfg.Lease})
	if err != nil {
		// Nothing is known about the rest: cancel nothing.
		r.setDB(false, "renew_leases", err)
		return
	}
	kept := make(map[int64]bool, len(jobs))    // still ours
	renewed := make(map[int64]bool, len(jobs)) // and extended
	for _, a := range answers {
		kept[a.ID], renewed[a.ID] = true, a.Renewed
	}
	r.setDB(true, "", nil)
	deadline := r.monotonic(start) + int64(r.cfg.Lease)
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
func (r *Relay) beat(ctx context.Context) {
	r.beatMu.Lock()
	defer r.beatMu.Unlock()
	hb, err := r.q.heartbeat(ctx, heartbeatParams{Relay: r.cfg.Name, LiveWithin: r.cfg.liveWithin(),
		Version: r.cfg.Version, Rate: r.published})
	if err != nil {
		r.setDB(false, "heartbeat", err)
		return
	}
	r.setDB(true, "", nil)
	r.writes.Add(1)
	live, others := hb.Live, hb.Others
	r.live.Store(int64(live))
	r.metrics.liveRelays.Set(float64(live))
	if r.rate != nil {
		r.published = r.rate.beat(r.cfg.RateLimit, live, others)
		return
	}
	if rl, ok := r.provider.(rateLimiter); ok && r.cfg.RateLimit > 0 {
		share := r.cfg.RateLimit / float64(live)
		burst := max(1, r.cfg.RateBurst/live)
		rl.SetRateLimit(share, burst)
		r.metrics.rate.Set(share)
		r.metrics.rateCeiling.Set(share)
	}
}

// liveWithin is how recent a relay's heartbeat must be for it to count as
// live (relayIsLive): the lease, three heartbeat intervals. A relay that
// crashed counts as live for a lease after its last heartbeat.
func (c Config) liveWithin() time.Duration { return c.Lease }

// checkLive counts the live relays, as the heartbeat does, and when their
// number is not what the last heartbeat found (a relay crashed: its last
// heartbeat just became older than the lease), has the lease keeper beat
// now, so the rate limit is shared again within a sweep instead of at the
// next heartbeat. Every relay's sweep looks for itself, so none needs to
// tell the others.
func (r *Relay) checkLive(ctx context.Context) {
	seen := r.live.Load()
	if seen == 0 {
		return // no heartbeat yet
	}
	n, err := r.q.liveRelays(ctx, r.cfg.Name, r.cfg.liveWithin())
	if err != nil {
		r.setDB(false, "live_relays", err)
		return
	}
	if int64(n) != seen {
		select {
		case r.relaysChanged <- struct{}{}:
		default: // a beat is already due
		}
	}
}

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

// monotonic converts t to nanoseconds on the relay's monotonic clock.
func (r *Relay) monotonic(t time.Time) int64 { return int64(t.Sub(r.epoch)) }

// notifyRelays tells the other relays that this one came or went, so
// that they share the rate limit again at once. A lost notification costs
// them no more than waiting for their next heartbeat.
func (r *Relay) notifyRelays(ctx context.Context) {
	if err := r.q.relaysChanged(ctx); err != nil {
		r.log.Warn("could not tell the other relays to share the rate limit again", "error", err)
	}
}
