// Command bench measures outbox-relay against two baselines built here, a
// naive SKIP LOCKED relay and a River relay, on one Postgres server and one
// fake TalkJS served over loopback HTTP, and prints a markdown table.
//
//	cd bench && go run . [-quick] [-scenarios=drain,wakeup,producers,backlog,economy,footprint]
//
// It is a separate module so that River stays out of the main module's
// dependencies. Every run works in scratch databases cloned from templates
// it migrates itself, and drops them all when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// sizes are the workload sizes of a run.
type sizes struct {
	drainN, drainRuns          int
	wakeN                      int
	wakeGap                    time.Duration
	prodWarm, prodDur          time.Duration
	prodRounds                 int
	backlogSmall, backlogLarge int
	backlogFirst               int
	economyN, footprintN       int
	backlogLimit               time.Duration
	drainSystems               []string
	drainLatencies             []time.Duration
	callsN                     int
	rate100N, rate1000N        int
	systems                    []string // of the rate-limited and calls scenarios
	rateMax                    time.Duration
}

var fullSizes = sizes{
	drainN: 20000, drainRuns: 3,
	wakeN: 200, wakeGap: 50 * time.Millisecond,
	prodWarm: 500 * time.Millisecond, prodDur: 3 * time.Second, prodRounds: 1,
	backlogSmall: 10000, backlogLarge: 1000000, backlogFirst: 50000, backlogLimit: 60 * time.Second,
	economyN: 10000, footprintN: 10000,
	callsN: 20000, rate100N: 20000, rate1000N: 20000,
}

var quickSizes = sizes{
	drainN: 2000, drainRuns: 1,
	wakeN: 40, wakeGap: 50 * time.Millisecond,
	prodWarm: 200 * time.Millisecond, prodDur: time.Second, prodRounds: 1,
	backlogSmall: 5000, backlogLarge: 50000, backlogFirst: 5000, backlogLimit: 20 * time.Second,
	economyN: 2000, footprintN: 2000,
	callsN: 2000, rate100N: 1000, rate1000N: 4000,
}

var allScenarios = []string{"drain", "wakeup", "producers", "backlog", "economy", "footprint", "calls", "rate100", "rate1000"}

func main() {
	child := flag.String("child", "", "internal: run one baseline relay as a child process (naive or river)")
	quick := flag.Bool("quick", false, "small sizes, one run each: for checking the bench itself")
	scen := flag.String("scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios to run")
	dbURL := flag.String("db", defaultDBURL(), "Postgres URL of a database to connect to for creating scratch databases")
	profDir := flag.String("profile-dir", "", "where to write the CPU profile of our relay's 0 ms drain (default: a new temporary directory)")
	drainN := flag.Int("drain-n", 0, "intents per drain (default 20000; -quick 2000)")
	runs := flag.Int("runs", 0, "interleaved drain runs per system and latency (default 3; -quick 1)")
	backlogN := flag.Int("backlog-n", 0, "pending intents of the large backlog run, 0 for the default (1000000; -quick 50000), -1 to skip it")
	srcRoot := flag.String("src", "..", "root of the outbox-relay module (for building cmd/outbox-relay)")
	drainSystems := flag.String("drain-systems", "ours,naive,river,river-tuned", "systems the drain scenario runs")
	drainLatencies := flag.String("drain-latencies", "0s,20ms", "the fake's latencies the drain scenario runs at")
	systems := flag.String("systems", strings.Join(allSystems, ","), "systems the calls, rate100 and rate1000 scenarios run ("+strings.Join(allSystems, ", ")+"; ours-exact runs in rate1000 only, river-wait in the rate scenarios only)")
	rate100N := flag.Int("rate100-n", 0, "intents of the rate100 scenario (default 20000; -quick 1000)")
	rate1000N := flag.Int("rate1000-n", 0, "intents of the rate1000 scenario (default 20000; -quick 4000)")
	rateMax := flag.Duration("rate-max", 0, "cut a rate-limited run off after this long and report what it delivered by then (0: run to the end)")
	callsN := flag.Int("calls-n", 0, "intents of the calls scenario's drain workload (default 20000; -quick 2000); its repeat workload has the economy's size")
	verbose := flag.Bool("v", false, "log progress at debug level")
	flag.Parse()

	if *child != "" {
		if err := runChild(*child); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		return
	}

	sz := fullSizes
	if *quick {
		sz = quickSizes
	}
	if *drainN > 0 {
		sz.drainN = *drainN
	}
	if *runs > 0 {
		sz.drainRuns = *runs
	}
	if *rate100N > 0 {
		sz.rate100N = *rate100N
	}
	if *rate1000N > 0 {
		sz.rate1000N = *rate1000N
	}
	sz.rateMax = *rateMax
	if *callsN > 0 {
		sz.callsN = *callsN
	}
	for _, s := range strings.Split(*systems, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !contains(allSystems, s) {
			fmt.Fprintf(os.Stderr, "bench: unknown system %q (have %s)\n", s, strings.Join(allSystems, ", "))
			os.Exit(2)
		}
		sz.systems = append(sz.systems, s)
	}
	switch {
	case *backlogN > 0:
		sz.backlogLarge = *backlogN
	case *backlogN < 0:
		sz.backlogLarge = 0
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !contains(allScenarios, s) {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ", "))
			os.Exit(2)
		}
		want[s] = true
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	sz.drainSystems = strings.Split(*drainSystems, ",")
	for _, l := range strings.Split(*drainLatencies, ",") {
		d, err := time.ParseDuration(l)
		if err != nil {
			fmt.Fprintf(os.Stderr, "-drain-latencies: %v\n", err)
			os.Exit(2)
		}
		sz.drainLatencies = append(sz.drainLatencies, d)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, log, *dbURL, sz, want, *profDir, *srcRoot, *quick, os.Stdout)
	stop() // before os.Exit, which runs no deferred call
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func defaultDBURL() string {
	if u := os.Getenv("BENCH_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func run(ctx context.Context, log *slog.Logger, dbURL string, sz sizes, want map[string]bool, profDir, srcRoot string, quick bool, out io.Writer) error {
	began := time.Now()
	loadBefore := loadAvg()
	relayLog := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := newEnv(ctx, dbURL, relayLog)
	if err != nil {
		return err
	}
	defer e.close()
	e.log = relayLog

	if profDir == "" && want["drain"] {
		if profDir, err = os.MkdirTemp("", "outbox-bench-"); err != nil {
			return err
		}
	}
	var pgVersion string
	_ = e.admin.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion)

	rep := &report{}
	step := func(name string, fn func() error) {
		if !want[name] || ctx.Err() != nil {
			return
		}
		t := time.Now()
		log.Info("scenario starting", "scenario", name)
		if err := fn(); err != nil {
			log.Error("scenario failed", "scenario", name, "error", err)
			rep.errors = append(rep.errors, fmt.Sprintf("%s: %v", name, err))
		}
		log.Info("scenario finished", "scenario", name, "took", time.Since(t).Round(time.Second))
	}
	step("drain", func() error { return runDrain(ctx, log, e, sz, profDir, rep) })
	step("wakeup", func() error { return runWakeup(ctx, e, sz, rep) })
	step("producers", func() error { return runProducers(ctx, log, e, sz, rep) })
	step("backlog", func() error { return runBacklog(ctx, log, e, sz, rep) })
	step("economy", func() error { return runEconomy(ctx, e, sz, rep) })
	step("footprint", func() error { return runFootprint(ctx, e, sz, srcRoot, rep) })
	step("calls", func() error { return runCalls(ctx, log, e, sz, rep) })
	step("rate100", func() error { return runRate(ctx, log, e, sz, rep, "rate100", 100, 100, sz.rate100N, false) })
	step("rate1000", func() error { return runRate(ctx, log, e, sz, rep, "rate1000", 1000, 1000, sz.rate1000N, true) })
	if ctx.Err() != nil {
		rep.errors = append(rep.errors, "interrupted")
	}

	mode := "full"
	if quick {
		mode = "quick"
	}
	fmt.Fprintf(out, "## outbox-relay benchmark (%s)\n\n", mode)
	fmt.Fprintf(out, "Date %s; %d CPUs (GOMAXPROCS %d); Go %s; PostgreSQL %s; total time %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), pgVersion,
		time.Since(began).Round(time.Second))
	fmt.Fprintf(out, "Load average (1/5/15 min) at start: %s; at end: %s.\n\n", loadBefore, loadAvg())
	rep.write(out)
	writeSettings(out, sz, profDir)
	if len(rep.errors) > 0 {
		return errors.New(strings.Join(rep.errors, "; "))
	}
	return nil
}

func writeSettings(out io.Writer, sz sizes, profDir string) {
	fmt.Fprintf(out, "\n### Settings\n\n")
	lines := []string{
		"Postgres, the relays, the producers and the fake TalkJS share the machine; the fake is served over loopback HTTP by this process, and every system calls it through the project's `provider/talkjs` client (JWT auth, 200 pooled connections, 10 s timeout, no client-side rate limit except in the producer runs).",
		"Every run gets a fresh database cloned from a migrated template; the fake is cleared and its counters zeroed before each run. Relays use a pool of at most 10 connections.",
		fmt.Sprintf("ours: `relay.New` in-process, Concurrency %d, BatchSize %d, every other setting at its default (PollInterval 1s, Lease 10s, UserSyncTTL 1h, no rate limit).", inFlight, inFlight),
		fmt.Sprintf("naive: table `naive_outbox(id bigserial, payload jsonb, processed_at timestamptz)` with a partial index on unprocessed ids; a loop of BEGIN; SELECT ... WHERE processed_at IS NULL ORDER BY id LIMIT %d FOR UPDATE SKIP LOCKED; one goroutine per row making its calls one after another (user PUT, user PUT, conversation PUT, messages POST); UPDATE processed_at; COMMIT; sleeps %s only when a batch was empty. \"naive LISTEN\" adds a statement-level AFTER INSERT trigger that always runs pg_notify, and wakes on it. On a 429 it waits the answer's Retry-After (1 s without one) and makes the same call again, the row's earlier calls kept, up to %d times in a row (then the row stays unprocessed and is claimed again); it has no rate limit of its own.", naiveBatch, naivePoll, naiveMax429),
		fmt.Sprintf("River v0.51.2 (riverpgxv5, rivermigrate): the intent is a job (args = the intent's JSON) inserted with `InsertTx` in the order's transaction (bulk loads use `InsertManyFast`); its worker makes the same four sequential calls, and on a 429 returns `river.JobSnooze(Retry-After)` (1 s without one), so River runs the job again from its first call after that time without counting an attempt; no rate limit of its own. \"River waiting out 429s in place\" (rate scenarios): its worker meets a 429 as the naive relay does, and snoozes only after %d in a row. Drain like-for-like: MaxWorkers %d, FetchCooldown = FetchPollInterval = %s. \"River tuned\": MaxWorkers %d, FetchCooldown = FetchPollInterval = %s. Everything else at River's defaults.", naiveMax429, inFlight, riverFetchTune, riverTuned, riverFetchTune),
		fmt.Sprintf("Drain: %d pending intents, each with its own conversation, two users of its own and 2 messages (one POST); timed from relay start until the fake holds every message and the system's table shows nothing left; %d interleaved round(s), order rotated each round; median reported. The sequential round trips per intent are 3 for ours (users in parallel) and 4 for the baselines.", sz.drainN, sz.drainRuns),
		fmt.Sprintf("Wake-up: relay idle for 1 s, then %d transactions (order row + one intent) %s apart; latency = the fake's StoredAt of the intent's messages minus the time just before COMMIT was sent.", sz.wakeN, sz.wakeGap),
		fmt.Sprintf("Producers: P connections each committing (order row + intent) transactions for %s after %s warm-up, with that system's relay running against the fake (0 ms latency) through a client limited to %d requests/s, so the relays keep claiming but use little CPU; \"order-only\" commits the order row alone with no relay; ours uses outbox.Enqueue, naive a plain INSERT of the JSON, River InsertTx. One run per configuration, P = 8 then 32.", sz.prodDur, sz.prodWarm, producerRateLimit),
		fmt.Sprintf("Backlog (ours): rate over all %d intents with %d pending, vs rate over the first %d completions with %d pending, each measurement cut off after %s (0 ms latency; completions counted by messages stored at the fake). Loaded with INSERT ... SELECT generate_series, 10,000 rows per transaction, with the table's triggers skipped (session_replication_role = replica: no order lock, wake-up check or payload validation; ids still from the table's sequence; the payloads are the drain's valid ones), then ANALYZE and CHECKPOINT.", sz.backlogSmall, sz.backlogSmall, sz.backlogFirst, sz.backlogLarge, sz.backlogLimit),
		fmt.Sprintf("Call economy: %d intents, each between 2 of %d unchanged users, over %d conversations (each repeated with the same users and subject), 2 messages each; calls counted by the fake.", sz.economyN, economyUsers, economyConversations),
		fmt.Sprintf("Footprint: %d drain intents at 0 ms with the relay as its own process: ours is `outbox-relay run` built from cmd/outbox-relay (concurrency 100, no rate limit, metrics server on); the baselines are this program re-executed in child mode. CPU = the child's rusage user+system time from start to exit (including start-up and shutdown); peak RSS = its VmHWM read from /proc when the drain ended (not ru_maxrss, which for a vforked child includes the parent's RSS).", sz.footprintN),
		fmt.Sprintf("Calls: calls per intent counted by the fake, one relay of each system, no rate limit, 0 ms latency: the drain workload (%d intents, each with its own conversation and two new users, one POST) and the call economy's repeat workload (%d intents).", sz.callsN, sz.economyN),
		fmt.Sprintf("Rate-limited (rate100, rate1000): the fake allows 100 (burst 100) or 1,000 (burst 1,000) requests/s across all clients and answers every request over it 429 with a Retry-After (whole seconds, at least 1), queueing none. %d relays of each system run at once on one database, each with its own runner, pool and TalkJS client, as separate processes would; none is told the limit (ours: `relay.Config` RateAdaptive, RateLimit 0, as `OUTBOX_RATE_LIMIT` unset) except \"ours, told the exact limit\" in rate1000 (a fixed limit: RateAdaptive off, RateLimit 1000, RateBurst 1000, shared by the live relays). The relays start idle; then %d (rate100) or %d (rate1000) drain intents are inserted in bulk, and the rate is intents ÷ the time from the start of that insert to the last delivery (the fake holds every message and the system's table shows nothing left). 429s and calls are counted by the fake; calls per intent include the 429s.", rateRelays, sz.rate100N, sz.rate1000N),
	}
	if profDir != "" {
		lines = append(lines, fmt.Sprintf("CPU profile of the whole bench process during our first 0 ms drain: `%s`.", profilePath(profDir, "ours-drain-0ms.pprof")))
	}
	for _, l := range lines {
		fmt.Fprintf(out, "- %s\n", l)
	}
}

// ---- scenario drivers ------------------------------------------------------

func runDrain(ctx context.Context, log *slog.Logger, e *env, sz sizes, profDir string, rep *report) error {
	specs := []systemSpec{oursSpec(), naiveSpec(false), riverSpec(inFlight, riverFetchTune), riverSpec(riverTuned, riverFetchTune)}
	drainKeys := map[string]string{specs[0].label: "ours", specs[1].label: "naive", specs[2].label: "river", specs[3].label: "river-tuned"}
	latencies := sz.drainLatencies
	rates := map[string][]float64{} // key: latency|label
	pgCPU := map[string][]float64{} // Postgres CPU s per 10,000 intents; same key
	var errs []error
	for round := range sz.drainRuns {
		for _, lat := range latencies {
			for k := range specs {
				spec := specs[(k+round)%len(specs)]
				if !contains(sz.drainSystems, drainKeys[spec.label]) {
					continue
				}
				if spec.label == specs[3].label && lat != 0 {
					continue // River tuned is the 0 ms target's reference only
				}
				prof := ""
				if round == 0 && lat == 0 && spec.template == sysOurs && profDir != "" {
					prof = profilePath(profDir, "ours-drain-0ms.pprof")
				}
				res, err := e.drain(ctx, spec, sz.drainN, lat, prof)
				if err != nil {
					errs = append(errs, err)
					log.Error("drain run failed", "system", spec.label, "latency", lat, "error", err)
					continue
				}
				perTenK := res.pgCPU * 10000 / float64(sz.drainN)
				log.Info("drain", "round", round+1, "latency", lat, "system", spec.label,
					"intents_per_s", fmt.Sprintf("%.0f", res.rate), "elapsed", res.elapsed.Round(time.Millisecond),
					"pg_cpu_s_per_10k", fmt.Sprintf("%.2f", perTenK))
				key := lat.String() + "|" + spec.label
				rates[key] = append(rates[key], res.rate)
				pgCPU[key] = append(pgCPU[key], perTenK)
			}
		}
	}
	med := func(lat time.Duration, spec systemSpec) float64 { return median(rates[lat.String()+"|"+spec.label]) }
	ours, naive, river100, river200 := specs[0], specs[1], specs[2], specs[3]

	o, n, r, rt := med(0, ours), med(0, naive), med(0, river100), med(0, river200)
	rep.add(row{scenario: "Drain, 0 ms latency (intents/s); River 100 workers", ours: o, naive: n, river: r,
		unit: "%.0f", target: "≥ 1× naive", met: ok(o, n, 1)})
	rep.add(row{scenario: "Drain, 0 ms latency (intents/s); River tuned, 200 workers", ours: o, naive: n, river: rt,
		unit: "%.0f", target: "≥ 1.5× River tuned", met: ok(o, rt, 1.5)})
	cpu := func(spec systemSpec) float64 { return median(pgCPU[time.Duration(0).String()+"|"+spec.label]) }
	rep.add(row{scenario: "Drain, 0 ms latency: Postgres backends' CPU seconds per 10,000 intents; River 100 workers",
		ours: cpu(ours), naive: cpu(naive), river: cpu(river100), unit: "%.2f", lowerBetter: true, target: "(information)",
		note: "utime+stime of the relay's backends (by application_name) from relay start until drained; median"})

	const ceiling = 100.0 / (3 * 0.020)
	o, n, r = med(20*time.Millisecond, ours), med(20*time.Millisecond, naive), med(20*time.Millisecond, river100)
	rep.add(row{scenario: "Drain, 20 ms latency (intents/s); 100 in flight each", ours: o, naive: n, river: r, unit: "%.0f",
		target: fmt.Sprintf("≥ 1.5× naive, ≥ 1.3× River, ≥ 90%% of %.0f/s", ceiling),
		met:    all(ok(o, n, 1.5), ok(o, r, 1.3), ok(o, ceiling, 0.9)),
		note:   fmt.Sprintf("ours = %.0f%% of the ceiling 100/(3 × 20 ms)", 100*o/ceiling)})
	return errors.Join(errs...)
}

func runWakeup(ctx context.Context, e *env, sz sizes, rep *report) error {
	specs := []systemSpec{oursSpec(), naiveSpec(true), riverSpec(riverTuned, riverFetchTune)}
	lats := make([][]time.Duration, len(specs))
	var errs []error
	for i, spec := range specs {
		l, err := e.wakeup(ctx, spec, sz.wakeN, sz.wakeGap)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		lats[i] = l
	}
	ms := func(i int, p float64) float64 {
		if lats[i] == nil {
			return 0
		}
		return float64(percentile(lats[i], p)) / float64(time.Millisecond)
	}
	for _, p := range []struct {
		pct    float64
		target string
		limit  float64
	}{{50, "≤ 3 ms", 3}, {95, "", 0}, {99, "≤ 15 ms", 15}} {
		r := row{scenario: fmt.Sprintf("Wake-up latency p%.0f (ms); naive = LISTEN variant, River tuned", p.pct),
			ours: ms(0, p.pct), naive: ms(1, p.pct), river: ms(2, p.pct), unit: "%.1f", lowerBetter: true, target: "(information)"}
		if p.pct == 99 && lats[0] != nil {
			slow := 0
			for _, l := range lats[0] {
				if l > 100*time.Millisecond {
					slow++
				}
			}
			r.note = fmt.Sprintf("ours: %d of %d over 100 ms, max %.0f ms", slow, len(lats[0]), ms(0, 100))
		}
		if p.target != "" {
			r.target = p.target
			r.met = judge(lats[0] != nil, ms(0, p.pct) <= p.limit)
		}
		rep.add(r)
	}
	return errors.Join(errs...)
}

func runProducers(ctx context.Context, log *slog.Logger, e *env, sz sizes, rep *report) error {
	ours, plain, notify, rv := oursSpec(), naiveSpec(false), naiveSpec(true), riverSpec(riverTuned, riverFetchTune)
	type variant struct {
		label   string
		spec    *systemSpec
		running bool
	}
	variants := []variant{
		{"orders only", nil, false},
		{ours.label, &ours, true},
		{plain.label, &plain, true},
		{notify.label, &notify, true},
		{rv.label, &rv, true},
		{"ours, relay stopped", &ours, false},
	}
	var errs []error
	for _, p := range []int{8, 32} {
		results := map[string][]float64{}
		for range sz.prodRounds {
			for _, v := range variants {
				res, err := e.producers(ctx, v.spec, v.running, p, sz.prodWarm, sz.prodDur)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				log.Info("producers", "producers", p, "system", v.label, "commits_per_s", fmt.Sprintf("%.0f", res.perSec))
				results[v.label] = append(results[v.label], res.perSec)
			}
		}
		base := median(results["orders only"])
		o, n, nn, r, idle := median(results[ours.label]), median(results[plain.label]), median(results[notify.label]), median(results[rv.label]), median(results["ours, relay stopped"])
		rep.add(row{scenario: fmt.Sprintf("Producers ×%d: order+intent commits/s, relay running; naive = plain insert, no trigger", p),
			ours: o, naive: n, river: r, unit: "%.0f", target: "≥ 0.9× naive plain insert", met: ok(o, n, 0.9),
			note: fmt.Sprintf("order rows alone: %.0f/s; naive always-notify trigger: %.0f/s; ours with its relay stopped: %.0f/s", base, nn, idle)})
		if base > 0 {
			rep.add(row{scenario: fmt.Sprintf("Producers ×%d: %% of order-only throughput", p),
				ours: 100 * o / base, naive: 100 * n / base, river: 100 * r / base, unit: "%.0f%%", target: "(information)",
				note: fmt.Sprintf("naive always-notify: %.0f%%; ours, relay stopped: %.0f%%", 100*nn/base, 100*idle/base)})
		}
	}
	return errors.Join(errs...)
}

func runBacklog(ctx context.Context, log *slog.Logger, e *env, sz sizes, rep *report) error {
	limit := sz.backlogLimit
	n, d, err := e.backlog(ctx, sz.backlogSmall, sz.backlogSmall, limit)
	if err != nil {
		return err
	}
	small := float64(n) / d.Seconds()
	log.Info("backlog", "pending", sz.backlogSmall, "completed", n, "elapsed", d.Round(time.Millisecond), "intents_per_s", fmt.Sprintf("%.0f", small))
	smallNote := fmt.Sprintf("%d pending: %.0f/s", sz.backlogSmall, small)
	if n < sz.backlogSmall {
		smallNote += fmt.Sprintf(" (only %d done within the %s limit)", n, limit)
	}
	if sz.backlogLarge <= 0 {
		rep.add(row{scenario: fmt.Sprintf("Backlog: drain rate with %d pending (intents/s)", sz.backlogSmall), ours: small,
			unit: "%.0f", oursOnly: true, target: "(large backlog skipped)", note: smallNote})
		return nil
	}
	m, d2, err := e.backlog(ctx, sz.backlogLarge, sz.backlogFirst, limit)
	if err != nil {
		return err
	}
	large := float64(m) / d2.Seconds()
	log.Info("backlog", "pending", sz.backlogLarge, "completed", m, "elapsed", d2.Round(time.Millisecond), "intents_per_s", fmt.Sprintf("%.0f", large))
	note := fmt.Sprintf("%d pending: %.0f/s over the first %d; %s", sz.backlogLarge, large, m, smallNote)
	if m < sz.backlogFirst {
		note = fmt.Sprintf("%d pending: %.0f/s, but only %d of the first %d done within the %s limit; %s", sz.backlogLarge, large, m, sz.backlogFirst, limit, smallNote)
	}
	rep.add(row{scenario: fmt.Sprintf("Backlog: drain rate with %d pending ÷ rate with %d pending", sz.backlogLarge, sz.backlogSmall),
		ours: 100 * large / small, unit: "%.0f%%", oursOnly: true, target: "≥ 80%", met: judge(true, large >= 0.8*small), note: note})
	return nil
}

func runEconomy(ctx context.Context, e *env, sz sizes, rep *report) error {
	specs := []systemSpec{oursSpec(), naiveSpec(false), riverSpec(inFlight, riverFetchTune)}
	res := make([]economyResult, len(specs))
	var errs []error
	for i, spec := range specs {
		r, err := e.economy(ctx, spec, sz.economyN)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res[i] = r
	}
	val := func(i int, f func(economyResult) float64) float64 {
		if res[i].n == 0 {
			return 0
		}
		return f(res[i])
	}
	per := func(r economyResult) float64 { return r.perIntent() }
	users := func(r economyResult) float64 { return float64(r.userPuts) }
	posts := func(r economyResult) float64 { return float64(r.posts) / float64(r.n) }
	rep.add(row{scenario: "Call economy: HTTP calls per intent", ours: val(0, per), naive: val(1, per), river: val(2, per),
		unit: "%.2f", lowerBetter: true, target: "(information)",
		note: fmt.Sprintf("%d intents, %d users, %d conversations; ours conversation PUTs: %d", sz.economyN, economyUsers, economyConversations, res[0].convPuts)})
	rep.add(row{scenario: fmt.Sprintf("Call economy: user PUTs (%d distinct unchanged users)", economyUsers),
		ours: val(0, users), naive: val(1, users), river: val(2, users), unit: "%.0f", lowerBetter: true,
		target: fmt.Sprintf("≤ %d", economyUsers), met: judge(res[0].n > 0, res[0].userPuts <= economyUsers)})
	rep.add(row{scenario: "Call economy: message POSTs per intent (2 messages each)", ours: val(0, posts), naive: val(1, posts), river: val(2, posts),
		unit: "%.2f", lowerBetter: true, target: "1", met: judge(res[0].n > 0, res[0].posts == int64(res[0].n))})
	return errors.Join(errs...)
}

func runFootprint(ctx context.Context, e *env, sz sizes, srcRoot string, rep *report) error {
	dir, err := os.MkdirTemp("", "outbox-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	root, err := filepath.Abs(srcRoot)
	if err != nil {
		return err
	}
	bin, err := buildRelayBinary(ctx, root, dir)
	if err != nil {
		return err
	}
	specs := []systemSpec{oursSpec(), naiveSpec(false), riverSpec(inFlight, riverFetchTune)}
	res := make([]footprintResult, len(specs))
	var errs []error
	for i, spec := range specs {
		r, err := e.footprint(ctx, spec, bin, sz.footprintN)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res[i] = r
	}
	cpu := func(i int) float64 {
		if res[i].n == 0 {
			return 0
		}
		return res[i].cpuPer10k()
	}
	rss := func(i int) float64 { return float64(res[i].maxRSS) / (1 << 20) }
	rate := func(i int) float64 {
		if res[i].n == 0 {
			return 0
		}
		return float64(res[i].n) / res[i].elapsed.Seconds()
	}
	rep.add(row{scenario: "Footprint: relay process CPU seconds per 10,000 intents", ours: cpu(0), naive: cpu(1), river: cpu(2),
		unit: "%.2f", lowerBetter: true, target: "(information)",
		note: fmt.Sprintf("%d intents at 0 ms; drain rates as separate processes: ours %.0f/s, naive %.0f/s, River %.0f/s", sz.footprintN, rate(0), rate(1), rate(2))})
	rep.add(row{scenario: "Footprint: relay process peak RSS (MB)", ours: rss(0), naive: rss(1), river: rss(2),
		unit: "%.0f", lowerBetter: true, target: "≤ 150 MB", met: judge(res[0].n > 0, rss(0) <= 150)})
	return errors.Join(errs...)
}

// ok reports whether a ≥ factor × b (and both were measured).
func ok(a, b, factor float64) verdict {
	if a <= 0 || b <= 0 {
		return verdictUnknown
	}
	if a >= factor*b {
		return verdictYes
	}
	return verdictNo
}

func all(vs ...verdict) verdict {
	out := verdictYes
	for _, v := range vs {
		switch v {
		case verdictUnknown:
			return verdictUnknown
		case verdictNo:
			out = verdictNo
		}
	}
	return out
}

// loadAvg returns the machine's load averages, to show what else ran.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
