package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
)

// Fake TalkJS credentials: the fake and every relay's client share them.
const (
	fakeAppID  = "bench-app"
	fakeSecret = "bench-secret-key"
)

// dbPrefix starts the name of every database the bench creates. The pid in
// a run's prefix lets a later run recognise and drop what a killed run left.
const dbPrefix = "obench_"

// ordersDDL is the application's own table, the same in every scratch
// database: producers insert an order and its intent in one transaction.
const ordersDDL = `
CREATE TABLE orders (
    id          bigserial   PRIMARY KEY,
    customer    text        NOT NULL,
    total_cents bigint      NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now()
)`

// env is what every scenario shares: the Postgres server with one migrated
// template database per system, and the fake TalkJS served over loopback
// HTTP.
type env struct {
	adminURL string
	admin    *pgxpool.Pool
	prefix   string
	log      *slog.Logger

	fake    *faketalkjs.Server
	fakeURL string
	httpSrv *http.Server

	seq atomic.Int64

	mu      sync.Mutex
	created []string // scratch databases not yet dropped
}

// system names, which are also the template suffixes.
const (
	sysOurs  = "ours"
	sysNaive = "naive"
	sysRiver = "river"
)

func newEnv(ctx context.Context, adminURL string, log *slog.Logger) (*env, error) {
	admin, err := pgxpool.New(ctx, adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactURL(adminURL), err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := admin.Ping(pingCtx); err != nil {
		admin.Close()
		return nil, fmt.Errorf("postgres at %s is not reachable: %w", redactURL(adminURL), err)
	}
	e := &env{
		adminURL: adminURL,
		admin:    admin,
		prefix:   fmt.Sprintf("%s%d_%d_", dbPrefix, os.Getpid(), time.Now().Unix()%100000),
		log:      log,
	}
	e.dropStale(ctx)

	e.fake = faketalkjs.New(faketalkjs.Config{AppID: fakeAppID, SecretKey: fakeSecret})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		admin.Close()
		return nil, fmt.Errorf("listen for the fake TalkJS: %w", err)
	}
	e.fakeURL = "http://" + ln.Addr().String()
	e.httpSrv = &http.Server{Handler: e.fake, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = e.httpSrv.Serve(ln) }()

	if err := e.makeTemplates(ctx); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// dropStale drops databases left by bench runs whose process is gone.
func (e *env) dropStale(ctx context.Context) {
	rows, err := e.admin.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE $1`, dbPrefix+"%")
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, name := range names {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, dbPrefix), "_")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if _, err := e.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err == nil {
			e.log.Info("dropped a database left by an earlier run", "database", name)
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func (e *env) templateName(system string) string { return e.prefix + "tpl_" + system }

// makeTemplates creates one migrated database per system. Scenarios clone
// them, so every run starts from the same empty state.
func (e *env) makeTemplates(ctx context.Context) error {
	for _, system := range []string{sysOurs, sysNaive, sysRiver} {
		name := e.templateName(system)
		if err := e.createDB(ctx, name, ""); err != nil {
			return err
		}
		url := e.dbURL(name)
		if err := migrateSystem(ctx, system, url, e.log); err != nil {
			return fmt.Errorf("migrate template %s: %w", name, err)
		}
	}
	return nil
}

func migrateSystem(ctx context.Context, system, url string, log *slog.Logger) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, ordersDDL); err != nil {
		return fmt.Errorf("create orders: %w", err)
	}
	switch system {
	case sysOurs:
		if _, err := migrations.Up(ctx, url, log); err != nil {
			return err
		}
	case sysNaive:
		if _, err := pool.Exec(ctx, naiveDDL); err != nil {
			return fmt.Errorf("create naive_outbox: %w", err)
		}
	case sysRiver:
		m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
		if err != nil {
			return err
		}
		if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) createDB(ctx context.Context, name, template string) error {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	// A template being cloned must have no other session; retry briefly in
	// case a pool from the previous run is still closing.
	var err error
	for range 20 {
		if _, err = e.admin.Exec(ctx, sql); err == nil {
			e.mu.Lock()
			e.created = append(e.created, name)
			e.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("create database %s: %w", name, err)
}

// scratch is a database cloned from a system's template for one run.
type scratch struct {
	name string
	url  string
}

// clone creates a fresh database for one run of system.
func (e *env) clone(ctx context.Context, system string) (scratch, error) {
	name := fmt.Sprintf("%s%s_%d", e.prefix, system, e.seq.Add(1))
	if err := e.createDB(ctx, name, e.templateName(system)); err != nil {
		return scratch{}, err
	}
	return scratch{name: name, url: e.dbURL(name)}, nil
}

func (e *env) drop(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := e.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		e.log.Warn("drop scratch database", "database", name, "error", err)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, n := range e.created {
		if n == name {
			e.created = append(e.created[:i], e.created[i+1:]...)
			break
		}
	}
}

// dbURL is the admin URL with its database replaced by name.
func (e *env) dbURL(name string) string {
	cfg, err := pgx.ParseConfig(e.adminURL)
	if err != nil {
		return e.adminURL
	}
	// Rebuild a key/value connection string from the parsed admin URL.
	parts := []string{
		"host=" + cfg.Host,
		"port=" + strconv.Itoa(int(cfg.Port)),
		"user=" + cfg.User,
		"dbname=" + name,
		"sslmode=disable",
	}
	if cfg.Password != "" {
		parts = append(parts, "password="+cfg.Password)
	}
	return strings.Join(parts, " ")
}

// close drops every database this run created and stops the fake.
func (e *env) close() {
	e.mu.Lock()
	names := append([]string(nil), e.created...)
	e.mu.Unlock()
	// Clones first, templates last.
	for i := len(names) - 1; i >= 0; i-- {
		e.drop(names[i])
	}
	if e.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = e.httpSrv.Shutdown(ctx)
		cancel()
	}
	e.admin.Close()
}

// resetFake prepares the fake for a run: the given latency, no stored data,
// zeroed counters.
func (e *env) resetFake(latency time.Duration) {
	e.fake.SetFaults(faketalkjs.Faults{Latency: latency})
	e.fake.Clear()
	e.fake.Reset()
}

// clientConfig is the TalkJS client every system uses: the project's own
// client, sized like cmd/outbox-relay sizes it for 100 workers.
func (e *env) clientConfig(rateLimit float64) talkjs.Config {
	return talkjs.Config{
		AppID:     fakeAppID,
		SecretKey: fakeSecret,
		BaseURL:   e.fakeURL,
		Timeout:   talkjs.DefaultTimeout, // fits the default lease
		MaxConns:  200,
		RateLimit: rateLimit,
	}
}

// relayPool opens the pool a relay uses: at most 10 connections, as
// cmd/outbox-relay opens by default. Its sessions carry application_name
// appName, by which backendCPU finds them.
func relayPool(ctx context.Context, url, appName string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 10
	cfg.ConnConfig.RuntimeParams["application_name"] = appName
	return pgxpool.NewWithConfig(ctx, cfg)
}

func redactURL(u string) string {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
}
