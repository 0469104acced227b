package relay

import (
	"context"
	"sync"
	"time"
)

// sweeper is the service that takes back other relays' expired leases
// every sweep interval, notices relays that stopped heartbeating (checkLive)
// and, at most every unparkHeadsInterval, makes one
// bounded pass for stranded parked heads. Its goroutine owns the pass's
// cursor.
type sweeper struct {
	serviceEnv
	cfg    sweeperConfig
	keeper *leaseKeeper // read: the live relays it counted; told when they changed
	startStop

	// parkCursor is the conversation the last unparkHeads pass ended at.
	parkCursor struct {
		sync.Mutex
		after string
	}
}

func newSweeper(env serviceEnv, cfg sweeperConfig, keeper *leaseKeeper) *sweeper {
	return &sweeper{serviceEnv: env, cfg: cfg, keeper: keeper, startStop: startStop{name: "sweeper"}}
}

// Start sweeps in the background until Stop.
func (w *sweeper) Start(ctx context.Context) error { return w.start(ctx, w.loop) }

// Stop waits for the sweep under way (bounded) and stops.
func (w *sweeper) Stop(ctx context.Context) error { return w.stop(ctx) }

func (w *sweeper) loop(ctx context.Context) {
	sweep := time.NewTicker(w.cfg.Interval)
	defer sweep.Stop()
	var lastUnpark time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			w.sweep(ctx, &lastUnpark)
		}
	}
}

// sweep runs one sweep, bounded by the heartbeat interval.
func (w *sweeper) sweep(ctx context.Context, lastUnpark *time.Time) {
	opCtx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	w.expireLeases(opCtx)
	w.checkLive(opCtx)
	if time.Since(*lastUnpark) >= unparkHeadsInterval {
		*lastUnpark = time.Now()
		w.unparkHeads(opCtx)
	}
}

// expiredRow is one row of expireLeases: an intent taken back, and the
// state it was left in (pending, or dead when its budget was spent).
type expiredRow struct {
	ID    int64
	State string
}

// expireLeases takes back intents whose relay stopped renewing its lease,
// and wakes every relay to claim them.
func (w *sweeper) expireLeases(ctx context.Context) {
	expired, err := w.q.expireLeases(ctx, expireParams{MaxAttempts: w.cfg.MaxAttempts, MaxAge: w.cfg.MaxAge,
		CallTimeout: w.cfg.CallTimeout})
	if err != nil {
		w.setDB(false, "expire_leases", err)
		return
	}
	for _, e := range expired {
		w.log.Warn("took back an intent whose lease expired", "intent_id", e.ID, "state", e.State)
	}
	n := len(expired)
	if n > 0 {
		w.metrics.leasesExpired.Add(float64(n))
		w.wake()
		// Other relays may have free slots when this one has none. A
		// lost notification costs them a poll interval, nothing more.
		if err := w.q.wakeRelays(ctx); err != nil {
			w.log.Warn("could not wake the other relays after taking back expired leases", "error", err)
		}
	}
}

// checkLive counts the live relays, as the heartbeat does, and when their
// number is not what the last heartbeat found (a relay crashed: its last
// heartbeat just became older than the lease), has the lease keeper beat
// now, so the rate limit is shared again within a sweep instead of at the
// next heartbeat. Every relay's sweep looks for itself, so none needs to
// tell the others.
func (w *sweeper) checkLive(ctx context.Context) {
	seen := w.keeper.live.Load()
	if seen == 0 {
		return // no heartbeat yet
	}
	n, err := w.q.liveRelays(ctx, w.cfg.Name, w.cfg.LiveWithin)
	if err != nil {
		w.setDB(false, "live_relays", err)
		return
	}
	if int64(n) != seen {
		w.keeper.relaysChanged()
	}
}

// unparkHeadsPerSweep bounds the conversations one pass of unparkHeads
// visits for a stranded parked head, and unparkHeadsInterval how often a
// sweep makes a pass, whatever the lease: a pass costs at most this many
// index probes (a pass of 200 took 4 to 17 ms by EXPLAIN ANALYZE with
// 20,000 active conversations, 1,000 took 35 to 70 ms), and a stranded
// intent is unparked within (active conversations / this) seconds.
const (
	unparkHeadsPerSweep = 200
	unparkHeadsInterval = time.Second
)

// unparkHeads runs one bounded pass of unparkHeads from where the last
// pass stopped, wrapping around after the last conversation, and wakes
// the relays when it unparked a head.
func (w *sweeper) unparkHeads(ctx context.Context) {
	w.parkCursor.Lock()
	defer w.parkCursor.Unlock()
	u, err := w.q.unparkHeads(ctx, unparkParams{After: w.parkCursor.after, Limit: unparkHeadsPerSweep})
	if err != nil {
		w.setDB(false, "unpark_heads", err)
		return
	}
	last, visited, unparked := u.Last, u.Visited, u.Unparked
	w.parkCursor.after = last
	if visited < unparkHeadsPerSweep {
		w.parkCursor.after = ""
	}
	if unparked > 0 {
		w.log.Warn("unparked intents nothing active precedes", "count", unparked)
		w.wake()
		if err := w.q.wakeRelays(ctx); err != nil {
			w.log.Warn("could not wake the other relays after unparking intents", "error", err)
		}
	}
}
