// Command outbox-relay delivers conversation-start intents from a Postgres
// outbox table to TalkJS. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/internal/demo"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

const usage = `outbox-relay delivers conversation-start intents from Postgres to TalkJS.

Usage:
  outbox-relay <command> [flags]

Commands:
  migrate   apply the embedded schema migrations (idempotent)
  run       run the relay daemon until SIGINT/SIGTERM
  status    counts by state, lag, failed calls, live relays, dead letters
  inspect   one intent and every call made for it: inspect ID | --key KEY
  retry     put dead intents back to pending: retry ID... | --key K | --all-dead
  cancel    stop pending intents (they go dead): cancel ID... | --key K
  purge     delete old dead letters: purge --dead --older-than 720h
  grant     grant a role what a producer, relay or auditor needs: grant PARTY ROLE
  pause     stop every relay from claiming (deliveries under way finish)
  resume    end a pause: relays claim again at once
  demo      run an end-to-end demo against a local Postgres and a fake TalkJS
  health    ask the local relay's /healthz (or /readyz); for container checks
  version   print the version and what is known of the build

Configuration is read from the environment; see README.md.
Run "outbox-relay <command> --help" for a command's details.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal starts a graceful stop, a second one
		// kills the process at once.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], envconfig.OsLookuper(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "migrate":
		err = cmdMigrate(ctx, rest, env, stdout, stderr)
	case "run":
		err = cmdRun(ctx, rest, env, stdout, stderr)
	case "status":
		err = cmdStatus(ctx, rest, env, stdout, stderr)
	case "retry":
		err = cmdRetry(ctx, rest, env, stdout, stderr)
	case "inspect":
		err = cmdInspect(ctx, rest, env, stdout, stderr)
	case "cancel":
		err = cmdCancel(ctx, rest, env, stdout, stderr)
	case "purge":
		err = cmdPurge(ctx, rest, env, stdout, stderr)
	case "pause":
		err = cmdPause(ctx, rest, env, stdout, stderr)
	case "resume":
		err = cmdResume(ctx, rest, env, stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, rest, env, stdout, stderr)
	case "health":
		err = cmdHealth(ctx, rest, env, stdout, stderr)
	case "grant":
		err = cmdGrant(ctx, rest, env, stdout, stderr)
	case "version", "--version":
		readBuildInfo().print(stdout)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "outbox-relay: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errNotFound):
		fmt.Fprintf(stderr, "outbox-relay %s: %v\n", cmd, err)
		return 3
	default:
		fmt.Fprintf(stderr, "outbox-relay %s: %v\n", cmd, err)
		return 1
	}
}

// errUsage marks a command-line mistake already reported to stderr.
var errUsage = errors.New("usage")

func newFlags(name, help string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, help)
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(stderr, "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

const migrateHelp = `Usage: outbox-relay migrate

Applies the embedded migrations to DATABASE_URL. Idempotent, and safe to run
from several processes at once (an advisory lock serialises them).

Environment:
  DATABASE_URL   Postgres connection string (required)
`

func cmdMigrate(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("migrate", migrateHelp, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var cfg dbConfig
	if err := loadConfig(ctx, env, &cfg); err != nil {
		return err
	}
	if err := checkDatabaseURL(cfg.DatabaseURL); err != nil {
		return err
	}
	res, err := migrations.Up(ctx, cfg.DatabaseURL, nil)
	if err != nil {
		return err
	}
	if len(res.Applied) == 0 {
		fmt.Fprintf(stdout, "schema up to date (version %d)\n", res.Version)
	} else {
		fmt.Fprintf(stdout, "applied migrations %v; schema at version %d\n", res.Applied, res.Version)
	}
	return nil
}

const runHelp = `Usage: outbox-relay run

Runs the relay until SIGINT or SIGTERM, then stops claiming, lets in-flight
deliveries finish (up to OUTBOX_SHUTDOWN_TIMEOUT) and exits. Applies the
migrations first unless OUTBOX_MIGRATE=false. Serves /metrics, /healthz and
/readyz on OUTBOX_HTTP_ADDR.

Environment (see README.md for all of them):
  DATABASE_URL         Postgres connection string (required)
  TALKJS_APP_ID        TalkJS app id (required)
  TALKJS_SECRET_KEY    TalkJS secret key (required; never logged)
  TALKJS_BASE_URL      API base (default https://api.talkjs.com)
  OUTBOX_CONCURRENCY   intents delivered at once (default 100)
  OUTBOX_RATE_LIMIT    requests/s for the whole app, shared by all relays (default 100)
  OUTBOX_LEASE         claim lease; crash takeover time (default 10s)
  OUTBOX_MAX_ATTEMPTS  retry budget in attempts (default 25)
  OUTBOX_MAX_AGE       retry budget in age (default 24h)
  OUTBOX_HTTP_ADDR     metrics and health address (default 127.0.0.1:0, a free
                       loopback port, logged at start; "" disables)
  OUTBOX_LOG_LEVEL     debug, info, warn, error (default info)
`

func cmdRun(ctx context.Context, args []string, env envconfig.Lookuper, _, stderr io.Writer) error {
	fs := newFlags("run", runHelp, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var cfg runConfig
	if err := loadConfig(ctx, env, &cfg); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)

	if cfg.Migrate {
		res, err := migrations.Up(ctx, cfg.DatabaseURL, logger)
		if err != nil {
			return err
		}
		logger.Info("schema ready", "version", res.Version, "applied", len(res.Applied))
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rcfg := cfg.relayConfig(logger)
	rcfg.Registerer = reg

	// The relay's own sessions, with statement and lock timeouts inside
	// its lease.
	pool, err := newPool(ctx, cfg.DatabaseURL, func(pc *pgxpool.Config) { relay.ConfigurePool(pc, rcfg) })
	if err != nil {
		return err
	}
	defer pool.Close()

	client, err := talkjs.New(cfg.talkjsConfig())
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	defer client.Close()

	r, err := relay.New(pool, client, rcfg)
	if err != nil {
		return err
	}

	if cfg.HTTPAddr != "" {
		srv, err := serveHTTP(cfg.HTTPAddr, reg, r, logger)
		if err != nil {
			return err
		}
		defer func() {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(shutdownCtx)
		}()
	}
	return r.Run(ctx)
}

// serveHTTP serves metrics and health endpoints in the background.
func serveHTTP(addr string, reg *prometheus.Registry, r *relay.Relay, logger *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		h := r.Health()
		w.Header().Set("Content-Type", "application/json")
		if !h.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("OUTBOX_HTTP_ADDR: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("http server", "error", err)
		}
	}()
	logger.Info("serving metrics and health", "addr", ln.Addr().String())
	return srv, nil
}

const demoHelp = `Usage: outbox-relay demo

Runs the relay end to end on this machine: uses DATABASE_URL if set, else the
server at 127.0.0.1:5432, else a throwaway cluster started with initdb/pg_ctl
(removed afterwards). Creates a scratch database, starts a fake TalkJS in the
process, enqueues a few order intents, delivers them, and prints the status
table and what the fake received.
`

func cmdDemo(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("demo", demoHelp, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dbURL, _ := env.Lookup("DATABASE_URL")
	return demo.Run(ctx, demo.Options{DatabaseURL: dbURL, Out: stdout, Log: stderr})
}

// dbPool connects to DATABASE_URL, all that status and retry need.
func dbPool(ctx context.Context, env envconfig.Lookuper) (*pgxpool.Pool, error) {
	var cfg dbConfig
	if err := loadConfig(ctx, env, &cfg); err != nil {
		return nil, err
	}
	if err := checkDatabaseURL(cfg.DatabaseURL); err != nil {
		return nil, err
	}
	return newPool(ctx, cfg.DatabaseURL, nil)
}

// newPool connects to url; configure, when not nil, adjusts the pool's
// configuration first.
func newPool(ctx context.Context, url string, configure func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = 10
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return pool, nil
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	l, _ := parseLevel(level)
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// oneLine folds whitespace and cuts s to n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

func idList(ids []int64) string {
	if len(ids) == 0 {
		return ""
	}
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return ": " + strings.Join(parts, ", ")
}
