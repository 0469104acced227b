package relay

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"sync/atomic"
	"time"
)

// claimedIntent is one intent claimed for delivery: its row and its lease.
type claimedIntent struct {
	id       int64
	token    int64 // lease token: fences the completion
	attempt  int   // this attempt's number (1 for the first)
	payload  []byte
	key      string            // delivery_key: namespaces the message idempotency keys
	hashes   map[string][]byte // user id -> content hash; nil when user syncs are off (TTL 0)
	skip     map[string]bool   // users TalkJS holds with this content, per outbox.synced_users
	convHash []byte            // the conversation PUT's content hash; nil when syncs are off (TTL 0)
	convSkip bool              // TalkJS holds the conversation with this content, per outbox.synced_conversations
	users    *intentUsers      // its payload and the user PUTs it waits for (userbatch.go)
	probe    bool              // let through by a paused gate to test the API
	claimed  time.Time
	deadline atomic.Int64 // local monotonic lease deadline, ns since relay.epoch
	cancel   context.CancelFunc
	ctx      context.Context // its delivery's context (set with users): done once the attempt ended, was cancelled or lost
}

const (
	dbRetryMin = 100 * time.Millisecond
	dbRetryMax = 2 * time.Second

	// callsPerIntentBound is the calls an intent is counted at when
	// claims are sized to the rate limit (rateRoom): an intent with two
	// new users in a claim that shares no batch call, and no sync record
	// to skip its conversation PUT. Most intents cost fewer (batched
	// users, skipped PUTs): the bound leaves room, never too little.
	callsPerIntentBound = 4

	// parkBatch bounds how many blocked intents one claim parks (see
	// claimBatch), so that the first claim to meet a long queue behind a
	// failing intent stays short; the next claims park the rest.
	parkBatch = 1000
)

// claimer is the service that claims intents and starts their workers in
// the worker pool. Stopping it stops claiming; deliveries under way go on
// (the pool drains them). Its goroutine owns the claim loop's state
// (claimState) and reads its two wake-up channels.
type claimer struct {
	serviceEnv
	cfg       claimerConfig
	gate      *gate                  // admits claims: all, one probe, or none for a while
	listening func() bool            // the listener's connection is up: a NOTIFY can wake the claimer
	freeSlots func() int             // how many intents a claim may take now (Relay.freeSlots)
	dispatch  func([]*claimedIntent) // starts the claimed intents' deliveries (Relay.dispatch)
	startStop

	wakeups       chan struct{} // something may be claimable now
	notifications chan struct{} // a producer's NOTIFY arrived
}

// claimerDeps is what the claimer is handed besides its env and slice.
type claimerDeps struct {
	gate      *gate
	listening func() bool
	freeSlots func() int
	dispatch  func([]*claimedIntent)
}

func newClaimer(env serviceEnv, cfg claimerConfig, d claimerDeps) *claimer {
	return &claimer{serviceEnv: env, cfg: cfg, gate: d.gate, listening: d.listening, freeSlots: d.freeSlots,
		dispatch: d.dispatch, wakeups: make(chan struct{}, 1), notifications: make(chan struct{}, 1),
		startStop: startStop{name: "claimer"}}
}

// signal wakes the claimer (non-blocking; one pending wake is enough).
func (c *claimer) signal() {
	select {
	case c.wakeups <- struct{}{}:
	default:
	}
}

// notify wakes the claimer for a producer's NOTIFY (non-blocking).
func (c *claimer) notify() {
	select {
	case c.notifications <- struct{}{}:
	default:
	}
}

// Start claims in the background until Stop.
func (c *claimer) Start(ctx context.Context) error { return c.start(ctx, c.loop) }

// Stop stops claiming and waits for the claim under way to end.
func (c *claimer) Stop(ctx context.Context) error { return c.stop(ctx) }

// loop claims intents while there are free slots and starts a worker
// for each. It sleeps only when a claim found nothing (or the gate says
// wait), until a notification, a freed slot, a gate change or the poll
// interval.
func (c *claimer) loop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	st := claimState{dbRetry: dbRetryMin}
	for ctx.Err() == nil {
		next, wait := c.claimStep(ctx, &st)
		switch next {
		case claimStop:
			return
		case claimAgain:
			continue
		}
		if !c.sleepClaim(ctx, timer, wait, &st) {
			return
		}
	}
}

// claimState is what the claim loop carries from one round to the next.
//
// A NOTIFY that wakes the relay to find nothing it may deliver
// (everything pending is blocked or waiting a backoff), though it claimed
// nothing since it asked for the NOTIFY, makes it quiet: it does not ask
// producers for another NOTIFY before its next poll, as each would cost a
// producer the NOTIFY lock for nothing.
type claimState struct {
	dbRetry           time.Duration // the wait after a failed claim
	notifiedWake      bool          // this round was woken by a NOTIFY
	claimedSinceAsked bool          // claimed something since asking for a NOTIFY
	quiet             bool          // ask for no NOTIFY before the next poll
}

// claimNext is what the claim loop does after a round.
type claimNext int

const (
	claimSleep claimNext = iota // wait for a wake-up or the returned wait
	claimAgain                  // claim again at once: there may be more
	claimStop                   // the claimer is stopping
)

// freeSlots is how many intents a claim may take now: the slots free,
// and no more than the provider's rate limit can serve within the lease
// (rateRoom). With deliveries in flight, claim once a quarter of that
// room (or a batch) is free rather than for every freed slot: a claim is
// a transaction, and claiming one row at a time behind a rate limit costs
// producers' commits more than the slots gain; and the users of a claim
// batch share batch calls (userbatch.go), so behind a rate limit, where
// slots free up a few at a time, a larger claim spends fewer calls per
// intent. An idle relay claims at once.
func (r *Relay) freeSlots() int {
	room := cap(r.slots)
	if n := r.rateRoom(); n > 0 {
		room = min(room, n)
	}
	inFlight := len(r.slots)
	free := room - inFlight
	if free <= 0 || inFlight > 0 && free < min(r.cfg.BatchSize, max(1, room/4)) {
		return 0
	}
	return free
}

// rateRoom is how many intents the provider's rate limit can deliver
// within half a lease, at callsPerIntentBound calls each; 0 when the
// provider has no limit. Claiming more than that would only hold them
// until the client's limiter refuses their calls for want of time before
// the lease ends (a rate_limited attempt, given back and claimed again):
// churn that writes attempt rows and spends nothing on the API.
func (r *Relay) rateRoom() int {
	rr, ok := r.provider.(rateReader)
	if !ok {
		return 0
	}
	limit := rr.RateLimit()
	if limit <= 0 {
		return 0
	}
	return max(1, int(limit*r.cfg.Lease.Seconds()/2/callsPerIntentBound))
}

// claimStep is one round of the claim loop: a claim when slots and the
// gate allow, its jobs dispatched. It returns what to do next and how
// long to sleep at most.
func (c *claimer) claimStep(ctx context.Context, st *claimState) (claimNext, time.Duration) {
	wait := c.cfg.PollInterval
	free := c.freeSlots()
	if free == 0 {
		return claimSleep, wait
	}
	limit := min(free, c.cfg.BatchSize)
	n, gateWait := c.gate.admit()
	if n == 0 {
		return claimSleep, min(wait, gateWait)
	}
	probe := n == 1
	if probe {
		limit = 1
	}
	jobs, err := c.claim(ctx, limit)
	if err != nil {
		if probe {
			c.gate.probeDone()
		}
		if ctx.Err() != nil {
			return claimStop, 0
		}
		c.setDB(false, "claim", err)
		wait, st.dbRetry = st.dbRetry, min(2*st.dbRetry, dbRetryMax)
		return claimSleep, wait
	}
	c.setDB(true, "", nil)
	st.dbRetry = dbRetryMin
	if probe {
		if len(jobs) == 0 {
			c.gate.probeDone()
		} else {
			jobs[0].probe = true
		}
	}
	c.dispatch(jobs)
	if len(jobs) > 0 {
		st.claimedSinceAsked, st.quiet = true, false
	} else if st.notifiedWake && !st.claimedSinceAsked {
		st.quiet = true
	}
	if len(jobs) == limit && !probe {
		return claimAgain, 0 // there may be more
	}
	if len(jobs) == 0 && c.gate.paused() == "" && c.listening() && !st.quiet {
		return c.askNotify(ctx, st, limit), wait
	}
	return claimSleep, wait
}

// askNotify is for a relay with nothing to do: it asks producers for a
// NOTIFY, then looks once more, since an intent committed between the
// claim and the flag would not notify.
func (c *claimer) askNotify(ctx context.Context, st *claimState, limit int) claimNext {
	if err := c.q.setWaiting(ctx); err != nil {
		if ctx.Err() != nil {
			return claimStop
		}
		c.setDB(false, "set_waiting", err)
		return claimSleep
	}
	st.claimedSinceAsked = false
	jobs, err := c.claim(ctx, limit)
	if err != nil {
		if ctx.Err() != nil {
			return claimStop
		}
		c.setDB(false, "claim", err)
		return claimSleep
	}
	c.dispatch(jobs)
	if len(jobs) > 0 {
		st.claimedSinceAsked = true
		return claimAgain
	}
	return claimSleep
}

// sleepClaim waits up to wait for a NOTIFY, a wake-up, a gate change or
// the timer. It returns false when ctx ended.
func (c *claimer) sleepClaim(ctx context.Context, timer *time.Timer, wait time.Duration, st *claimState) bool {
	timer.Reset(wait)
	st.notifiedWake = false
	select {
	case <-ctx.Done():
		return false
	case <-c.notifications:
		st.notifiedWake = true
		c.metrics.wakeups.WithLabelValues("notify").Inc()
	case <-c.wakeups:
		c.metrics.wakeups.WithLabelValues("internal").Inc()
	case <-c.gate.changes():
		c.metrics.wakeups.WithLabelValues("internal").Inc()
	case <-timer.C:
		st.quiet = false
		c.metrics.wakeups.WithLabelValues("poll").Inc()
	}
	if !timer.Stop() {
		select {
		case <-timer.C:
		default:
		}
	}
	return true
}

// claimedRow is one row of claimBatch, in its column order.
type claimedRow struct {
	ID       int64
	Token    int64
	Attempt  int
	Payload  []byte
	Key      string
	Hashes   []byte   // user id -> hex content hash, JSON; nil when syncs are off
	Skip     []string // users TalkJS holds with this content
	ConvHash []byte
	ConvSkip bool
}

// claim leases up to limit intents. A claim that has started is finished
// even when ctx ends, so that no lease is taken and then forgotten (it would
// hold its intents until it expired).
func (c *claimer) claim(ctx context.Context, limit int) ([]*claimedIntent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.StatementDeadline)
	defer cancel()
	claimed, err := c.q.claim(qctx, c.claimParams(limit))
	if err != nil {
		return nil, err
	}
	jobs := make([]*claimedIntent, 0, len(claimed))
	for _, row := range claimed {
		j := &claimedIntent{id: row.ID, token: row.Token, attempt: row.Attempt, payload: row.Payload, key: row.Key,
			convHash: row.ConvHash, convSkip: row.ConvSkip, claimed: start}
		j.hashes, j.skip = parseUserSyncs(row.Hashes, row.Skip)
		j.deadline.Store(c.monotonic(start) + int64(c.cfg.Lease))
		jobs = append(jobs, j)
		c.logStateChange(j.id, j.attempt, StatePending, StateDelivering, "claimed")
	}
	c.metrics.claimed.Add(float64(len(jobs)))
	c.metrics.claimBatch.Observe(float64(len(jobs)))
	c.metrics.claimDuration.Observe(time.Since(start).Seconds())
	return jobs, nil
}

// parseUserSyncs reads the claim's user hashes and skips. Should the
// hashes not parse, nothing is skipped or recorded: every user is PUT.
func parseUserSyncs(hashes []byte, skip []string) (map[string][]byte, map[string]bool) {
	if len(hashes) == 0 {
		return nil, nil
	}
	var hexes map[string]string
	if err := json.Unmarshal(hashes, &hexes); err != nil {
		return nil, nil
	}
	byID := make(map[string][]byte, len(hexes))
	for id, h := range hexes {
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, nil
		}
		byID[id] = b
	}
	skipped := make(map[string]bool, len(skip))
	for _, id := range skip {
		skipped[id] = true
	}
	return byID, skipped
}

// claimParams are claimBatch's arguments for a claim of up to limit intents.
func (c *claimer) claimParams(limit int) claimParams {
	return claimParams{Limit: limit, Relay: c.cfg.Name, Lease: c.cfg.Lease, SyncTTL: c.cfg.SyncTTL,
		AppID: c.cfg.AppID, ParkBatch: parkBatch}
}

// dispatch starts a worker per intent in the worker pool. The caller has
// checked there are free slots for all of them.
func (r *Relay) dispatch(jobs []*claimedIntent) {
	workCtx, workers := r.workers.workCtx(), &r.workers.wg
	jctxs := make([]context.Context, len(jobs))
	for i, j := range jobs {
		jctxs[i], j.cancel = context.WithCancel(workCtx)
	}
	// The batch's users are PUT together, before any conversation step.
	r.startUserSync(workCtx, jobs, jctxs, workers)
	for i, j := range jobs {
		r.slots <- struct{}{}
		r.metrics.inFlight.Inc()
		jctx := jctxs[i]
		r.held.add(j)
		workers.Add(1)
		go func() {
			defer workers.Done()
			res := r.deliverSafely(jctx, j)
			j.cancel()
			if j.probe {
				r.gate.probeDone() // whatever it met, the next probe may be scheduled
			}
			r.completer.send(res)
			<-r.slots
			r.metrics.inFlight.Dec()
			r.signal()
		}()
	}
}
