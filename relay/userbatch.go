package relay

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
)

// Batch user sync. The users of a claim batch are PUT together, before
// any intent's conversation step: each distinct user once, with the
// content of the highest intent id that carries it (commit order within a
// conversation), in batch calls of at most provider.MaxUsersPerPut users
// (PUT /v1/{appId}/users), made at once. An intent's conversation and
// messages wait only for the calls holding its own users.
//
// Which users are PUT follows the claim's records (outbox.synced_users),
// as for single PUTs: a user an intent skips is not PUT for it. A user
// whose highest intent skips it (TalkJS holds that, the latest, content)
// is PUT for no intent of the batch: sending an earlier intent's content
// would overwrite a later one.
//
// A batch call that fails fails every intent it served as a failed user
// PUT does (retryable, rate limited, auth, ...). A 400 applied nothing:
// the entries it names fail, permanently, the intents carrying the
// content refused (an earlier intent with other content is retried with
// its own, see errFor), and the others are sent again; a 400 that names
// none of them, or any other
// permanent answer to a batch, is searched by halves, down to single
// PUTs. A 404 or 405 from the batch route means the API has none: this
// relay sends users one by one from then on.

// metricStepUsers labels batch user calls in the calls metrics, apart
// from single PUTs (stepUser). Their rows in outbox.attempts have step
// 'user', one per intent and user served, sharing a call id.
const metricStepUsers callStep = "users"

// batchUser is one user a claim batch PUTs: the content sent, and the
// intents it is PUT for.
type batchUser struct {
	user provider.User
	hash []byte           // hash of the content sent, from the claim; nil when user syncs are off (TTL 0)
	from int64            // the intent whose content is sent: the highest id carrying the user
	jobs []*claimedIntent // the intents it is PUT for, in id order

	flight *userFlight // this relay's flight for (id, hash) when it leads it

	settled atomic.Bool   // settle ran (after a panic, guard may try again)
	done    chan struct{} // closed when it is settled; the fields below are written before
	// calls are the calls that carried it, in order: each is recorded for
	// every intent in jobs, with target the user's id.
	calls []callRecord
	err   error  // nil: TalkJS holds the content sent
	put   bool   // a PUT of it was sent or tried: its end goes to synced_users
	skip  string // not PUT: why (another delivery of this relay PUT the same content)
}

// intentUsers is what a claimed intent's delivery reads of the batch sync.
type intentUsers struct {
	intent  outbox.Intent
	err     error        // the payload cannot be delivered: no user was PUT for it
	users   []*batchUser // the users PUT for it
	skipped []string     // users it skips: TalkJS holds its content (outbox.synced_users)
	covered []string     // users not PUT for it: a later intent's content is held
}

// planIntent is a claimed intent as the plan reads it.
type planIntent struct {
	id     int64
	users  []outbox.User
	hashes map[string][]byte
	skip   map[string]bool
}

// userPlan is the users of a claim batch to PUT, and for each intent the
// users it waits for.
type userPlan struct {
	put      []*batchUser // by the first intent they serve, then user id
	byIntent map[int64][]*batchUser
	covered  map[int64][]string // intent id -> users not PUT for it (see planUsers)
}

// planUsers groups the users of a claim batch's intents: each user some
// intent does not skip is PUT once, with the content of the highest
// intent id carrying it, for the intents that do not skip it. When that
// highest intent skips the user (TalkJS holds its content), the user is
// PUT for no one, and is covered for the intents that do not skip it.
// jobs maps intent ids to the jobs the plan's batchUsers name.
func planUsers(intents []planIntent, jobs map[int64]*claimedIntent) userPlan {
	intents = slices.SortedFunc(slices.Values(intents), func(a, b planIntent) int { return cmp.Compare(a.id, b.id) })
	type latest struct {
		intent *planIntent
		user   outbox.User
	}
	last := map[string]latest{}
	needers := map[string][]int64{} // user id -> intents that do not skip it, in id order
	var order []string              // user ids in the order first met
	for i := range intents {
		in := &intents[i]
		for _, u := range in.users {
			if _, seen := last[u.ID]; !seen {
				order = append(order, u.ID)
			}
			last[u.ID] = latest{in, u}
			if !in.skip[u.ID] {
				needers[u.ID] = append(needers[u.ID], in.id)
			}
		}
	}
	p := userPlan{byIntent: map[int64][]*batchUser{}, covered: map[int64][]string{}}
	first := map[*batchUser]int64{} // the lowest intent id it serves
	for _, id := range order {
		ids := needers[id]
		if len(ids) == 0 {
			continue
		}
		l := last[id]
		if l.intent.skip[id] {
			for _, n := range ids {
				p.covered[n] = append(p.covered[n], id)
			}
			continue
		}
		bu := &batchUser{user: providerUser(l.user), from: l.intent.id, done: make(chan struct{})}
		if l.intent.hashes != nil {
			bu.hash = l.intent.hashes[id]
		}
		for _, n := range ids {
			bu.jobs = append(bu.jobs, jobs[n])
			p.byIntent[n] = append(p.byIntent[n], bu)
		}
		first[bu] = ids[0]
		p.put = append(p.put, bu)
	}
	// Keep an intent's users together, so that its calls are few and it
	// waits for as few calls as may be.
	slices.SortStableFunc(p.put, func(a, b *batchUser) int {
		return cmp.Or(cmp.Compare(first[a], first[b]), strings.Compare(a.user.ID, b.user.ID))
	})
	return p
}

func providerUser(u outbox.User) provider.User {
	return provider.User{
		ID:             u.ID,
		Name:           u.Name,
		Email:          u.Email,
		PhotoURL:       u.PhotoURL,
		WelcomeMessage: u.WelcomeMessage,
		Role:           u.Role,
		Custom:         u.Custom,
	}
}

// chunks splits users into runs of at most size, in order.
func chunks[T any](users []T, size int) [][]T {
	var out [][]T
	for len(users) > size {
		out = append(out, users[:size])
		users = users[size:]
	}
	if len(users) > 0 {
		out = append(out, users)
	}
	return out
}

// splitRefused splits the users of a batch refused with 400 into those
// the answer named (bad, with what it said of each) and the others, in
// order. Names that match no user sent are ignored.
func splitRefused(sent []*batchUser, ids, reasons []string) (bad []*batchUser, why []string, rest []*batchUser) {
	named := make(map[string]string, len(ids))
	for i, id := range ids {
		r := ""
		if i < len(reasons) {
			r = reasons[i]
		}
		named[id] = r
	}
	for _, bu := range sent {
		if r, ok := named[bu.user.ID]; ok {
			bad = append(bad, bu)
			why = append(why, r)
		} else {
			rest = append(rest, bu)
		}
	}
	return bad, why, rest
}

// newCallID returns a random UUID (version 4) naming one batch call.
func newCallID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// startUserSync reads the claimed intents' payloads, plans their users
// and starts the PUTs; each intent's users field says what to wait for. The
// calls run under workCtx, cut short once every intent they serve has ended
// (its context done), and are tracked by workers.
func (r *Relay) startUserSync(workCtx context.Context, jobs []*claimedIntent, jobCtxs []context.Context, workers *sync.WaitGroup) {
	byID := make(map[int64]*claimedIntent, len(jobs))
	intents := make([]planIntent, 0, len(jobs))
	for i, j := range jobs {
		byID[j.id] = j
		j.ctx = jobCtxs[i]
		iu := &intentUsers{}
		j.users = iu
		if err := json.Unmarshal(j.payload, &iu.intent); err != nil {
			iu.err = fmt.Errorf("payload: %w", err)
			continue
		}
		if err := iu.intent.Validate(); err != nil {
			iu.err = err
			continue
		}
		for _, u := range iu.intent.Users {
			if j.skip[u.ID] {
				iu.skipped = append(iu.skipped, u.ID)
			}
		}
		intents = append(intents, planIntent{id: j.id, users: iu.intent.Users, hashes: j.hashes, skip: j.skip})
	}
	plan := planUsers(intents, byID)
	for id, list := range plan.byIntent {
		byID[id].users.users = list
	}
	for id, list := range plan.covered {
		byID[id].users.covered = list
	}
	if len(plan.put) == 0 {
		return
	}

	// The calls stop when every intent of the batch has ended (each intent's
	// own calls are over by then, or it would still be waiting).
	ctx, cancel := context.WithCancel(workCtx)
	var live atomic.Int64
	live.Store(int64(len(jobCtxs)))
	for _, jctx := range jobCtxs {
		context.AfterFunc(jctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
	}
	workers.Add(1)
	go func() {
		defer workers.Done()
		defer cancel()
		r.syncUsers(ctx, plan.put)
	}()
}

// guard, deferred by every goroutine of a user sync, turns a panic into
// a failed sync of the users it handles (their intents are retried), so
// that a bug fails a batch's users instead of crashing the relay.
func (r *Relay) guard(users []*batchUser) {
	if p := recover(); p != nil {
		r.log.Error("user sync panicked; its intents are retried", "panic", p, "stack", string(debug.Stack()))
		err := fmt.Errorf("relay error: panic in user sync: %v", p)
		for _, bu := range users {
			r.settleIfOpen(bu, err)
		}
	}
}

// syncUsers PUTs users and settles each of them, whatever happens.
func (r *Relay) syncUsers(ctx context.Context, users []*batchUser) {
	defer r.guard(users)
	var lead []*batchUser
	var wg sync.WaitGroup
	for _, bu := range users {
		if bu.hash == nil {
			lead = append(lead, bu)
			continue
		}
		f, leader := r.users.begin(bu.user.ID, bu.hash)
		if leader {
			bu.flight = f
			lead = append(lead, bu)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.guard([]*batchUser{bu})
			r.followFlight(ctx, bu, f)
		}()
	}
	for _, c := range chunks(lead, provider.MaxUsersPerPut) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.guard(c)
			r.putBatch(ctx, c)
		}()
	}
	wg.Wait()
}

// followFlight waits for the PUT of the same content another delivery of
// this relay has under way, and makes its own when that one failed.
func (r *Relay) followFlight(ctx context.Context, bu *batchUser, f *userFlight) {
	ctx, stop := whileServed(ctx, bu.jobs)
	defer stop()
	ok, err := f.wait(ctx)
	switch {
	case err != nil:
		r.settle(bu, err, false)
	case ok:
		bu.skip = "synchronised by a concurrent delivery"
		r.settle(bu, nil, false)
	default:
		r.putOne(ctx, bu)
	}
}

// putBatch PUTs users in one batch call when it can, and settles them.
func (r *Relay) putBatch(ctx context.Context, users []*batchUser) {
	bp, ok := r.provider.(provider.BatchUserPutter)
	if !ok || r.batchOff.Load() || len(users) == 1 {
		r.putEach(ctx, users)
		return
	}
	pus := make([]provider.User, len(users))
	for i, bu := range users {
		pus[i] = bu.user
	}
	callID := newCallID()
	rec, err := r.callFor(ctx, jobsOf(users), metricStepUsers, func(ctx context.Context) error {
		return bp.PutUsers(ctx, pus)
	})
	if rec != nil {
		rec.callID = callID
	}
	var pe *provider.Error
	switch {
	case err == nil:
		for _, bu := range users {
			r.settle(bu, nil, true, *rec)
		}
	case errors.Is(err, provider.ErrBatchUnsupported):
		if r.batchOff.CompareAndSwap(false, true) {
			r.log.Warn("TalkJS has no batch users endpoint; users are sent one by one from now on",
				"status", rec.status)
		}
		rec.err = truncate(fmt.Sprintf("%s (sent again one by one)", rec.err))
		note(users, *rec)
		r.putEach(ctx, users)
	case errors.As(err, &pe) && pe.Kind == provider.Permanent:
		r.putBatchRefused(ctx, users, pe, rec)
	default:
		for _, bu := range users {
			if rec != nil {
				r.settle(bu, err, true, *rec)
			} else {
				r.settle(bu, err, true)
			}
		}
	}
}

// putBatchRefused settles a batch TalkJS refused for good: the entries
// its 400 names fail, the others are sent again; an answer that names
// none of them is searched by halves.
func (r *Relay) putBatchRefused(ctx context.Context, users []*batchUser, pe *provider.Error, rec *callRecord) {
	var bad, rest []*batchUser
	var why []string
	if pe.Status == http.StatusBadRequest {
		bad, why, rest = splitRefused(users, pe.InvalidIDs, pe.InvalidReasons)
	}
	if len(bad) == 0 {
		// The answer names none of them (or is not a 400, which says
		// nothing of any one entry): search by halves, so that only a
		// single PUT's answer or a named entry fails an intent.
		rec.err = truncate(fmt.Sprintf("%s (no entry named: sent again in halves)", rec.err))
		note(users, *rec)
		r.putHalves(ctx, users)
		return
	}
	for i, bu := range bad {
		brec := *rec
		ue := &provider.Error{Kind: provider.Permanent, Status: pe.Status,
			Err: fmt.Errorf("user %q refused by TalkJS in a batch users PUT: %s", bu.user.ID, why[i])}
		brec.err = truncate(ue.Error())
		r.settle(bu, ue, true, brec)
	}
	if len(rest) > 0 {
		ids := make([]string, len(bad))
		for i, bu := range bad {
			ids[i] = bu.user.ID
		}
		rec.err = truncate(fmt.Sprintf("refused for other entries (%s), nothing applied: sent again", strings.Join(ids, ", ")))
		note(rest, *rec)
		r.putBatch(ctx, rest)
	}
}

// putHalves PUTs each half of users as a batch of its own, at once.
func (r *Relay) putHalves(ctx context.Context, users []*batchUser) {
	half := len(users) / 2
	var wg sync.WaitGroup
	for _, part := range [][]*batchUser{users[:half], users[half:]} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.guard(part)
			r.putBatch(ctx, part)
		}()
	}
	wg.Wait()
}

// tightestDeadline is the earliest lease deadline of jobs (monotonic ns),
// 0 when none of them has one.
func tightestDeadline(jobs []*claimedIntent) int64 {
	var tightest int64
	for _, j := range jobs {
		if d := j.deadline.Load(); d != 0 && (tightest == 0 || d < tightest) {
			tightest = d
		}
	}
	return tightest
}

// newCallRecord is the attempt record of a call at metricStep that ended
// with err (cancelled: its delivery's context had ended) after d.
func newCallRecord(metricStep callStep, err error, cancelled bool, started time.Time, d time.Duration) *callRecord {
	step := metricStep
	if step == metricStepUsers {
		step = stepUser
	}
	rec := &callRecord{step: step, outcome: callOK, duration: d, started: started}
	var pe *provider.Error
	switch {
	case err == nil:
	case errors.As(err, &pe):
		rec.status = pe.Status
		rec.outcome = callOutcome(pe.Kind.String())
		rec.err = truncate(err.Error())
	default:
		rec.outcome = callRetryable
		if cancelled {
			rec.outcome = callCanceled
		}
		rec.err = truncate(err.Error())
	}
	return rec
}

// note records a call that carried users without settling them.
func note(users []*batchUser, rec callRecord) {
	for _, bu := range users {
		bu.calls = append(bu.calls, rec)
	}
}

// putEach PUTs users one by one, at once.
func (r *Relay) putEach(ctx context.Context, users []*batchUser) {
	var wg sync.WaitGroup
	for _, bu := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.guard([]*batchUser{bu})
			r.putOne(ctx, bu)
		}()
	}
	wg.Wait()
}

// putOne PUTs one user with a single call and settles it.
func (r *Relay) putOne(ctx context.Context, bu *batchUser) {
	rec, err := r.callFor(ctx, bu.jobs, stepUser, func(ctx context.Context) error {
		return r.provider.PutUser(ctx, bu.user)
	})
	if rec != nil {
		if len(bu.jobs) > 1 {
			// One call, recorded for each intent it served.
			rec.callID = newCallID()
		}
		r.settle(bu, err, true, *rec)
		return
	}
	r.settle(bu, err, true)
}

// settle ends a user's sync with err and the call that ended it, if any,
// and ends the flight it leads.
func (r *Relay) settle(bu *batchUser, err error, put bool, last ...callRecord) {
	if !bu.settled.CompareAndSwap(false, true) {
		return
	}
	bu.calls = append(bu.calls, last...)
	bu.err, bu.put = err, put
	if bu.flight != nil {
		r.users.end(bu.user.ID, bu.hash, bu.flight, err == nil)
		bu.flight = nil
	}
	close(bu.done)
}

// settleIfOpen settles bu with err unless it is settled already (after a
// panic, where it may be either).
func (r *Relay) settleIfOpen(bu *batchUser, err error) {
	if !bu.settled.Load() {
		r.settle(bu, err, true)
	}
}

func jobsOf(users []*batchUser) []*claimedIntent {
	var out []*claimedIntent
	seen := map[*claimedIntent]bool{}
	for _, bu := range users {
		for _, j := range bu.jobs {
			if !seen[j] {
				seen[j] = true
				out = append(out, j)
			}
		}
	}
	return out
}

// awaitUsers waits until the users of j are settled, records what their
// calls did for it and returns the error that decides its attempt. Every
// call it waits for is bounded by the lease of an intent it serves.
func (r *Relay) awaitUsers(j *claimedIntent, res *result) error {
	iu := j.users
	for _, id := range iu.skipped {
		r.skipUser(res, id, "unchanged since last synchronised")
	}
	for _, id := range iu.covered {
		r.skipUser(res, id, "a later intent of the batch carries this user, with content TalkJS holds")
	}
	for _, bu := range iu.users {
		<-bu.done
	}
	// The calls that carried a user and sent it again (a batch refused
	// for another entry, or the batch route missing) first, then the call
	// that settled each: the last failed row of an intent is what failed it.
	for _, bu := range iu.users {
		for _, c := range bu.calls[:max(len(bu.calls)-1, 0)] {
			c.target = bu.user.ID
			res.record(c)
		}
	}
	errs := make([]error, 0, len(iu.users))
	for _, bu := range iu.users {
		if bu.skip != "" {
			r.skipUser(res, bu.user.ID, bu.skip)
			continue
		}
		if n := len(bu.calls); n > 0 {
			c := bu.calls[n-1]
			c.target = bu.user.ID
			res.record(c)
		}
		if bu.put && bu.hash != nil {
			res.mu.Lock()
			res.syncs = append(res.syncs, userSync{id: bu.user.ID, hash: bu.hash, ok: bu.err == nil})
			res.mu.Unlock()
		}
		errs = append(errs, bu.errFor(j))
	}
	return worstError(errs)
}

// errFor is how bu's end decides the attempt of j. A permanent answer
// from TalkJS judged the content sent, the highest intent's: an intent
// that carries other content for the user is not judged by it, but
// retried (a counted attempt), to send its own once the refused intent
// no longer serves the user.
func (bu *batchUser) errFor(j *claimedIntent) error {
	var pe *provider.Error
	if bu.err == nil || j.id == bu.from || !errors.As(bu.err, &pe) || pe.Kind != provider.Permanent || pe.Status == 0 {
		return bu.err
	}
	if h := j.hashes[bu.user.ID]; h != nil && bytes.Equal(h, bu.hash) {
		return bu.err // its own content was refused
	}
	return &provider.Error{Kind: provider.Retryable, Status: pe.Status,
		Err: fmt.Errorf("user %q: TalkJS refused the content of intent %d, not this intent's: sent again with its own: %w", bu.user.ID, bu.from, bu.err)}
}

// callFor makes one API call for intents of one claim batch, as call does
// for one intent: after any relay-wide Retry-After, through the gate (a
// probe if any intent is one), with a deadline from the tightest lease among
// the intents still held. It returns the call's record, nil when no call was
// made (paused, lease ended, shutdown), and the metrics count it once
// under metricStep.
func (r *Relay) callFor(ctx context.Context, jobs []*claimedIntent, metricStep callStep, fn func(context.Context) error) (*callRecord, error) {
	ctx, stop := whileServed(ctx, jobs)
	defer stop()
	if err := r.waitRetryAfter(ctx); err != nil {
		return nil, err
	}
	probe := false
	for _, j := range jobs {
		probe = probe || j.probe
	}
	gen, ok := r.gate.send(probe)
	if !ok {
		return nil, errPaused
	}
	// The call may not outlive a lease it serves: once another relay may
	// own the intent, a late upsert from here could overwrite its newer
	// one. The provider's own timeout (at most half the lease) usually
	// ends it first; either way an unanswered call is a failure of the API.
	started := time.Now()
	tightest := tightestDeadline(jobs)
	budget, ok := callBudget(time.Duration(tightest-r.monotonic(started)), r.cfg.Lease)
	if tightest == 0 || !ok {
		return nil, errLeaseExpired
	}
	callCtx, cancel := context.WithTimeout(ctx, budget)
	err := noAnswer(fn(callCtx), ctx.Err() != nil, budget)
	cancel()
	d := time.Since(started)
	rec := newCallRecord(metricStep, err, ctx.Err() != nil, started, d)
	if ctx.Err() == nil || err == nil {
		r.gate.observe(err, gen)
	}
	r.metrics.calls.WithLabelValues(string(metricStep), string(rec.outcome)).Inc()
	r.metrics.callDuration.WithLabelValues(string(metricStep)).Observe(d.Seconds())
	if err != nil && r.log.Enabled(ctx, levelDebug) {
		r.log.Debug("call failed", "intent_id", jobs[0].id, "intents", len(jobs), "attempt", jobs[0].attempt,
			"step", metricStep, "status", rec.status, "error", rec.err)
	}
	return rec, err
}

// whileServed returns ctx, cancelled as well once every intent has ended
// (its delivery's context done: the attempt ended, or the intent was
// cancelled or passed to another relay), so that a call serving only
// such intents stops at once instead of running to its deadline. Jobs
// without a context (not started by startUserSync) leave ctx as it is.
func whileServed(ctx context.Context, jobs []*claimedIntent) (context.Context, context.CancelFunc) {
	for _, j := range jobs {
		if j.ctx == nil {
			return ctx, func() {}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var live atomic.Int64
	live.Store(int64(len(jobs)))
	stops := make([]func() bool, len(jobs))
	for i, j := range jobs {
		stops[i] = context.AfterFunc(j.ctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel()
	}
}
