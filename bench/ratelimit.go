package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// The systems of the rate-limited and calls scenarios, as named by -systems.
const (
	keyOurs      = "ours"       // ours not told the limit (RateLimit 0)
	keyOursExact = "ours-exact" // ours configured with the fake's exact limit (rate1000 only)
	keyNaive     = "naive"
	keyRiver     = "river"      // River snoozing the job on a 429
	keyRiverWait = "river-wait" // River waiting out a 429 in place (rate scenarios only)
)

var allSystems = []string{keyOurs, keyOursExact, keyNaive, keyRiver, keyRiverWait}

// rateRelays is how many relays of each system run at once in the
// rate-limited scenarios, each as its own process would: its own runner,
// pool and TalkJS client.
const rateRelays = 3

// rateResult is one rate-limited run.
type rateResult struct {
	n        int           // intents delivered
	of       int           // intents inserted; more than n when the run was cut off
	elapsed  time.Duration // first intent inserted → last intent delivered, or the cut-off
	load     time.Duration // inserting the n intents
	requests int64         // API requests the fake received, 429s included
	limited  int64         // of which answered 429
	routes   map[string]int64
	cuts     map[string]float64 // ours: cuts of the adaptive limits, by cause, all relays
	// background: ours: the share of 429s each relay's adaptive limit
	// learnt as not following the rate.
	background []float64
}

func (r rateResult) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

// cut says whether the run was cut off before every intent was delivered.
func (r rateResult) cut() bool { return r.n < r.of }

// share429 is the share of calls answered 429, in percent.
func (r rateResult) share429() float64 {
	if r.requests == 0 {
		return 0
	}
	return 100 * float64(r.limited) / float64(r.requests)
}

func (r rateResult) callsPerIntent() float64 { return float64(r.requests) / float64(r.n) }

// answeredPerIntent counts the calls not refused with 429, per intent.
func (r rateResult) answeredPerIntent() float64 {
	return float64(r.requests-r.limited) / float64(r.n)
}

// oursWith is ours with its relay configuration changed by set.
func oursWith(label string, set func(*relay.Config)) systemSpec {
	spec := oursSpec()
	spec.label = label
	inner := spec.make
	spec.make = func(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) (relayRunner, error) {
		r, err := inner(pool, p, log)
		if err != nil {
			return nil, err
		}
		set(&r.(*oursRunner).cfg)
		return r, nil
	}
	return spec
}

// rateLimited runs relays relays of spec at once on one database against
// the fake limited to limit requests per second with bursts of burst
// (requests over it answered 429 with Retry-After, nothing queued). The
// relays start idle; n drain intents are then inserted in bulk, and the
// run is timed from the start of that insert until the fake holds every
// message and the system's table shows nothing left. No client has a
// rate limit of its own: ours is configured by set, the baselines not at
// all. A run not done after maxDur (0: no cut-off) is cut off there, and
// its result counts the intents the system recorded as delivered by then.
func (e *env) rateLimited(ctx context.Context, log *slog.Logger, spec systemSpec, n, relays int, limit float64, burst int, maxDur time.Duration) (rateResult, error) {
	s, err := e.open(ctx, spec, 0)
	if err != nil {
		return rateResult{}, err
	}
	defer s.close()
	if err := s.addRelays(ctx, relays-1, 0); err != nil {
		return rateResult{}, err
	}
	e.resetFake(0)
	e.fake.SetFaults(faketalkjs.Faults{RateLimit: limit, Burst: burst})
	defer e.fake.SetFaults(faketalkjs.Faults{})

	// Each intent needs at most 4 calls: allow four times the time that
	// takes at the limit, so a system that wastes calls still finishes.
	timeout := 2*time.Minute + time.Duration(16*float64(n)/limit*float64(time.Second))
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, r := range s.relays() {
		if err := r.start(runCtx); err != nil {
			return rateResult{}, fmt.Errorf("%s: start: %w", spec.label, err)
		}
	}
	// Let the relays find nothing and go idle, as deployed relays waiting
	// for work would be.
	time.Sleep(time.Second)

	progress := make(chan struct{})
	defer close(progress)
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-progress:
				return
			case <-t.C:
				st := e.fake.Stats()
				log.Info("rate-limited run", "system", spec.label, "limit", limit,
					"delivered", e.fake.MessageCount()/2, "of", n, "requests", st.Requests, "429s", st.Statuses[http.StatusTooManyRequests])
			}
		}
	}()

	start := time.Now()
	if err := s.r.load(runCtx, n, func(i int) outbox.Intent { return drainIntent(s.tag, i) }); err != nil {
		return rateResult{}, fmt.Errorf("%s: load: %w", spec.label, err)
	}
	loaded := time.Since(start)
	waitCtx, cancelWait := runCtx, context.CancelFunc(func() {})
	if maxDur > 0 {
		waitCtx, cancelWait = context.WithDeadline(runCtx, start.Add(maxDur))
	}
	defer cancelWait()
	if err := e.waitMessages(waitCtx, 2*n); err != nil {
		if ctx.Err() != nil || runCtx.Err() != nil || maxDur == 0 {
			return rateResult{}, fmt.Errorf("%s: %w", spec.label, err)
		}
		elapsed := time.Since(start)
		st := e.fake.Stats()
		done, derr := s.r.delivered(ctx)
		if derr != nil {
			return rateResult{}, fmt.Errorf("%s: count delivered after the cut-off: %w", spec.label, derr)
		}
		log.Warn("rate-limited run cut off", "system", spec.label, "after", maxDur, "delivered", done, "of", n)
		return rateResult{n: int(done), of: n, elapsed: elapsed, load: loaded, requests: st.Requests,
			limited: st.Statuses[http.StatusTooManyRequests], routes: st.Routes, cuts: rateCuts(s), background: rateBackground(s)}, nil
	}
	if err := s.waitDrained(runCtx); err != nil {
		return rateResult{}, err
	}
	elapsed := time.Since(start)
	st := e.fake.Stats()
	cuts, background := rateCuts(s), rateBackground(s)
	for _, r := range s.relays() {
		r.stop()
	}
	if err := s.verify(ctx, n, 2*n); err != nil {
		return rateResult{}, err
	}
	return rateResult{n: n, of: n, elapsed: elapsed, load: loaded, requests: st.Requests,
		limited: st.Statuses[http.StatusTooManyRequests], routes: st.Routes, cuts: cuts, background: background}, nil
}

// rateCuts sums the cuts of the adaptive limits of a session's relays of
// ours, by cause; nil for the other systems.
func rateCuts(s *session) map[string]float64 {
	var cuts map[string]float64
	for _, r := range s.relays() {
		o, isOurs := r.(*oursRunner)
		if !isOurs {
			continue
		}
		if cuts == nil {
			cuts = map[string]float64{}
		}
		for cause, n := range o.rateCuts() {
			cuts[cause] += n
		}
	}
	return cuts
}

// rateBackground returns the share of 429s each of ours relays' adaptive
// limit learnt as not following the rate; nil for the other systems.
func rateBackground(s *session) []float64 {
	var shares []float64
	for _, r := range s.relays() {
		if o, isOurs := r.(*oursRunner); isOurs {
			shares = append(shares, o.gauge("outbox_relay_rate_limit_background_429_ratio"))
		}
	}
	return shares
}

// cutsNote describes the cuts of a result, "" when none were counted.
func cutsNote(r rateResult) string {
	if r.cuts == nil {
		return ""
	}
	bg := make([]string, len(r.background))
	for i, v := range r.background {
		bg[i] = fmt.Sprintf("%.2f%%", 100*v)
	}
	return fmt.Sprintf("adaptive limit cuts on 429: %.0f, on slow answers: %.0f; share of 429s learnt as not the rate's, by relay: %s",
		r.cuts["429"], r.cuts["slow"], strings.Join(bg, ", "))
}

// rateSpecs are the systems of a rate-limited scenario, by -systems key.
func rateSpecs(limit float64, burst int) map[string]systemSpec {
	return map[string]systemSpec{
		// As OUTBOX_RATE_LIMIT unset configures it: adaptive, no ceiling.
		keyOurs: oursWith("ours, not told the limit", func(c *relay.Config) {
			c.RateAdaptive, c.RateLimit = true, 0
		}),
		// Told the limit and holding it: a fixed limit, not adaptive.
		keyOursExact: oursWith(fmt.Sprintf("ours, told the exact limit (%g/s)", limit), func(c *relay.Config) {
			c.RateAdaptive, c.RateLimit, c.RateBurst = false, limit, burst
		}),
		keyNaive:     naiveSpec(false),
		keyRiver:     riverSpec(inFlight, riverFetchTune),
		keyRiverWait: riverWaitSpec(inFlight, riverFetchTune),
	}
}

// runRate is a rate-limited scenario: the selected systems, rateRelays
// relays each, n intents through the fake limited to limit requests/s.
// withExact runs ours told the exact limit too, and compares.
func runRate(ctx context.Context, log *slog.Logger, e *env, sz sizes, rep *report, name string, limit float64, burst, n int, withExact bool) error {
	specs := rateSpecs(limit, burst)
	order := []string{keyOurs, keyNaive, keyRiver, keyRiverWait}
	if withExact {
		order = []string{keyOurs, keyOursExact, keyNaive, keyRiver, keyRiverWait}
	}
	res := map[string]rateResult{}
	var errs []error
	for _, k := range order {
		if !contains(sz.systems, k) {
			continue
		}
		spec := specs[k]
		log.Info("rate-limited run starting", "scenario", name, "system", spec.label, "intents", n, "limit", limit)
		r, err := e.rateLimited(ctx, log, spec, n, rateRelays, limit, burst, sz.rateMax)
		if err != nil {
			errs = append(errs, err)
			log.Error("rate-limited run failed", "scenario", name, "system", spec.label, "error", err)
			continue
		}
		log.Info("rate-limited run", "scenario", name, "system", spec.label, "delivered", r.n, "of", r.of,
			"intents_per_s", fmt.Sprintf("%.1f", r.rate()), "elapsed", r.elapsed.Round(time.Millisecond),
			"load", r.load.Round(time.Millisecond), "requests", r.requests, "429s", r.limited,
			"share_429", fmt.Sprintf("%.2f%%", r.share429()), "calls_per_intent", fmt.Sprintf("%.2f", r.callsPerIntent()),
			"routes", fmt.Sprint(r.routes), "cuts", fmt.Sprint(r.cuts), "background_429", fmt.Sprint(r.background))
		res[k] = r
	}
	get := func(k string, f func(rateResult) float64) float64 {
		r, ok := res[k]
		if !ok || r.n == 0 {
			return 0
		}
		return f(r)
	}
	rate := func(r rateResult) float64 { return r.rate() }
	share := func(r rateResult) float64 { return r.share429() }
	calls := func(r rateResult) float64 { return r.callsPerIntent() }
	answered := func(r rateResult) float64 { return r.answeredPerIntent() }
	// describe is a system's figures for a note.
	describe := func(k, name string) string {
		r, ok := res[k]
		switch {
		case !ok:
			return name + " not run"
		case r.cut():
			return fmt.Sprintf("%s cut off after %.0f s with %d of %d delivered", name, r.elapsed.Seconds(), r.n, r.of)
		default:
			return fmt.Sprintf("%s %.0f s", name, r.elapsed.Seconds())
		}
	}
	head := fmt.Sprintf("Rate-limited %g req/s (burst %d, then 429 + Retry-After), %d relays each, %d intents", limit, burst, rateRelays, n)
	target := func(r *row) {
		if limit == 100 {
			r.target, r.met = "≥ 1.9× naive and River", all(ok(r.ours, r.naive, 1.9), ok(r.ours, r.river, 1.9))
		} else {
			r.target = "(information)"
		}
	}
	o, nv := get(keyOurs, rate), get(keyNaive, rate)
	r := row{scenario: head + ": intents/s, none told the limit; River snoozes the job on a 429", ours: o, naive: nv, river: get(keyRiver, rate), unit: "%.1f",
		note: "first insert to last delivery: " + describe(keyOurs, "ours") + ", " + describe(keyNaive, "naive") + ", " + describe(keyRiver, "River")}
	target(&r)
	rep.add(r)
	rw := row{scenario: head + ": intents/s; River waits out a 429 in place", ours: o, naive: nv, river: get(keyRiverWait, rate), unit: "%.1f",
		note: fmt.Sprintf("%s; River waiting: %.2f%% of calls 429, %.2f calls/intent", describe(keyRiverWait, "River waiting"), get(keyRiverWait, share), get(keyRiverWait, calls))}
	target(&rw)
	rep.add(rw)
	s := row{scenario: head + ": % of calls answered 429", ours: get(keyOurs, share), naive: get(keyNaive, share), river: get(keyRiver, share),
		unit: "%.2f%%", lowerBetter: true, target: "(information)", note: "ours: " + cutsNote(res[keyOurs])}
	if res[keyOurs].cuts == nil {
		s.note = ""
	}
	has := func(k string) bool { r, ok := res[k]; return ok && r.n > 0 }
	s.measured = &[3]bool{has(keyOurs), has(keyNaive), has(keyRiver)}
	if limit == 100 {
		s.target = "ours ≤ 2%"
		_, measured := res[keyOurs]
		s.met = judge(measured, get(keyOurs, share) <= 2)
	}
	rep.add(s)
	rep.add(row{scenario: head + ": calls per intent delivered, 429s included", ours: get(keyOurs, calls), naive: get(keyNaive, calls), river: get(keyRiver, calls),
		unit: "%.2f", lowerBetter: true, target: "(information)",
		note: fmt.Sprintf("without the 429s: ours %.2f, naive %.2f, River %.2f", get(keyOurs, answered), get(keyNaive, answered), get(keyRiver, answered))})
	if withExact {
		ex := get(keyOursExact, rate)
		x := row{scenario: head + ": ours not told the limit ÷ ours told it (intents/s)", oursOnly: true, unit: "%.0f%%",
			target: "≥ 85%",
			note: fmt.Sprintf("not told: %.1f/s, %.2f%% 429s, %.2f calls/intent, %s; told %g/s: %.1f/s, %.2f%% 429s, %.2f calls/intent",
				o, get(keyOurs, share), get(keyOurs, calls), cutsNote(res[keyOurs]), limit, ex, get(keyOursExact, share), get(keyOursExact, calls))}
		if o > 0 && ex > 0 {
			x.ours = 100 * o / ex
		}
		x.met = judge(o > 0 && ex > 0, o >= 0.85*ex)
		rep.add(x)
	}
	return errors.Join(errs...)
}

// runCalls counts the calls per intent of the selected systems on the
// drain workload (two new users, one conversation, one POST each) and on
// the repeat workload (the call economy's), one relay each, no rate limit.
func runCalls(ctx context.Context, log *slog.Logger, e *env, sz sizes, rep *report) error {
	type spec struct {
		key  string
		spec systemSpec
	}
	specs := []spec{{keyOurs, oursSpec()}, {keyNaive, naiveSpec(false)}, {keyRiver, riverSpec(inFlight, riverFetchTune)}}
	workloads := []struct {
		name   string
		n      int
		gen    func(tag string, i int) outbox.Intent
		target float64
		note   string
	}{
		{"Calls per intent, drain workload (2 new users, 1 conversation, 1 POST each)", sz.callsN, drainIntent, 2.1,
			fmt.Sprintf("%d intents, each its own conversation and two users of its own", sz.callsN)},
		{"Calls per intent, repeat workload (the call economy's)", sz.economyN, economyIntent, 1.3,
			fmt.Sprintf("%d intents, each between 2 of %d unchanged users, over %d conversations", sz.economyN, economyUsers, economyConversations)},
	}
	var errs []error
	for _, w := range workloads {
		got := map[string]economyResult{}
		for _, sp := range specs {
			if !contains(sz.systems, sp.key) {
				continue
			}
			r, err := e.countCalls(ctx, sp.spec, w.n, w.gen)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info("calls", "workload", w.name, "system", sp.spec.label, "calls_per_intent", fmt.Sprintf("%.3f", r.perIntent()),
				"user_puts", r.userPuts, "batch_user_puts", r.batchPuts, "conversation_puts", r.convPuts, "posts", r.posts)
			got[sp.key] = r
		}
		per := func(k string) float64 {
			r, ok := got[k]
			if !ok {
				return 0
			}
			return r.perIntent()
		}
		o := got[keyOurs]
		note := w.note
		if o.n > 0 {
			note += fmt.Sprintf("; ours: %d single user PUTs, %d batch user PUTs, %d conversation PUTs, %d message POSTs",
				o.userPuts, o.batchPuts, o.convPuts, o.posts)
		}
		rep.add(row{scenario: w.name, ours: per(keyOurs), naive: per(keyNaive), river: per(keyRiver), unit: "%.2f",
			lowerBetter: true, target: fmt.Sprintf("ours ≤ %.1f", w.target),
			met: judge(o.n > 0, per(keyOurs) <= w.target), note: note})
	}
	return errors.Join(errs...)
}
