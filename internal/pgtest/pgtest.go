// Package pgtest gives each test its own migrated Postgres database, cloned
// from a template so it takes milliseconds. It makes sure a server is up
// first: OUTBOX_TEST_DATABASE_URL if set, else the local server at
// 127.0.0.1:5432 (started with pg_ctlcluster when it is down), else a
// throwaway cluster made with initdb and pg_ctl for this test process.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgcluster"
	"github.com/outbox-relay/outbox-relay/migrations"
)

// EnvURL names the variable that points tests at a server of your choice.
const EnvURL = "OUTBOX_TEST_DATABASE_URL"

type server struct {
	once     sync.Once
	adminURL string
	template string
	cluster  *pgcluster.Cluster
	err      error
}

// The test binary's one server; set up on first use, removed by Main.
var srv server

// Main runs the package's tests, removes a throwaway cluster if one was
// started, and exits. Call it from TestMain.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the exit, for a TestMain with its own clean-up: it
// returns the exit code.
func Run(m *testing.M) int {
	code := m.Run()
	if srv.cluster != nil {
		if err := srv.cluster.Remove(); err != nil {
			log.Printf("pgtest: remove cluster: %v", err)
		}
	}
	return code
}

func (s *server) setup() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s.adminURL = os.Getenv(EnvURL)
	if s.adminURL == "" {
		s.adminURL = pgcluster.DefaultURL
		if err := pgcluster.Ping(ctx, s.adminURL, 3*time.Second); err != nil {
			if err := pgcluster.StartLocalService(ctx, s.adminURL); err != nil {
				c, err := pgcluster.Start(ctx)
				if err != nil {
					s.err = fmt.Errorf("no Postgres at %s and could not start one: %w", s.adminURL, err)
					return
				}
				s.cluster = c
				s.adminURL = c.URL("postgres")
			}
		}
	}
	s.template, s.err = ensureTemplate(ctx, s.adminURL)
}

// ensureTemplate creates (once per migration set, across test processes) a
// migrated database to clone.
func ensureTemplate(ctx context.Context, adminURL string) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS(), path)
		h.Write([]byte(path))
		h.Write(b)
		return err
	})
	if err != nil {
		return "", err
	}
	name := "outbox_relay_tmpl_" + hex.EncodeToString(h.Sum(nil))[:12]

	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", pgcluster.Redact(adminURL), err)
	}
	defer conn.Close(context.Background())
	// Test processes of several packages start together: one builds.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(7467737401)`); err != nil {
		return "", err
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock(7467737401)`) //nolint:errcheck // the lock ends with the connection anyway
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	// Build under another name and rename, so a half-built template (a
	// crash mid-migration) is never cloned.
	build := name + "_build"
	if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{build}.Sanitize()+` WITH (FORCE)`); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{build}.Sanitize()); err != nil {
		return "", err
	}
	if _, err := migrations.Up(ctx, withDatabase(adminURL, build), nil); err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	if _, err := conn.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{build}.Sanitize()+` RENAME TO `+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return name, nil
}

// AdminURL returns the URL of the server's postgres database, starting a
// server if needed. It fails the test when no server can be had.
func AdminURL(tb testing.TB) string {
	tb.Helper()
	srv.once.Do(srv.setup)
	if srv.err != nil {
		tb.Fatalf("pgtest: %v", srv.err)
	}
	return srv.adminURL
}

// NewDatabase creates a fresh, migrated database for tb, dropped when tb ends,
// and returns its URL.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	admin := AdminURL(tb)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "outbox_relay_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()+` TEMPLATE `+pgx.Identifier{srv.template}.Sanitize()); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`); err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
		}
	})
	return withDatabase(admin, name)
}

// NewEmptyDatabase creates an empty (unmigrated) database for tb.
func NewEmptyDatabase(tb testing.TB) string {
	tb.Helper()
	admin := AdminURL(tb)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "outbox_relay_test_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`); err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
		}
	})
	return withDatabase(admin, name)
}

// NewPool returns a pool on a fresh migrated database, closed when tb ends.
func NewPool(tb testing.TB) (*pgxpool.Pool, string) {
	tb.Helper()
	dbURL := NewDatabase(tb)
	return Pool(tb, dbURL), dbURL
}

// Pool opens a pool on dbURL, closed when tb ends. Each configure function
// adjusts the parsed configuration first, in order. Tests build every pool
// through here.
func Pool(tb testing.TB, dbURL string, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		tb.Fatalf("pgtest: pool: %v", err)
	}
	for _, c := range configure {
		c(cfg)
	}
	pool, err := pgxpool.NewWithConfig(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("pgtest: pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

func withDatabase(u, db string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return u
	}
	parsed.Path = "/" + db
	return parsed.String()
}

// MainWithDatabase is Main for a package whose Example functions need a
// database: they have no testing.TB, so before the tests run it creates one
// fresh migrated database, runs setupSQL in it (e.g. the application's own
// tables), and sets DATABASE_URL to it, as an application's environment
// would. The database is dropped after the run.
func MainWithDatabase(m *testing.M, setupSQL string) {
	code := runWithDatabase(m, setupSQL)
	if srv.cluster != nil {
		if err := srv.cluster.Remove(); err != nil {
			log.Printf("pgtest: remove cluster: %v", err)
		}
	}
	os.Exit(code)
}

func runWithDatabase(m *testing.M, setupSQL string) int {
	srv.once.Do(srv.setup)
	if srv.err != nil {
		log.Printf("pgtest: %v", srv.err)
		return 1
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := pgx.Identifier{"outbox_relay_example_" + hex.EncodeToString(b[:])}.Sanitize()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, srv.adminURL)
	if err != nil {
		log.Printf("pgtest: connect: %v", err)
		return 1
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+name+` TEMPLATE `+pgx.Identifier{srv.template}.Sanitize()); err != nil {
		log.Printf("pgtest: create database: %v", err)
		return 1
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			log.Printf("pgtest: drop database: %v", err)
		}
	}()
	dbURL := withDatabase(srv.adminURL, strings.Trim(name, `"`))
	if setupSQL != "" {
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			log.Printf("pgtest: connect: %v", err)
			return 1
		}
		_, err = conn.Exec(ctx, setupSQL)
		_ = conn.Close(context.Background())
		if err != nil {
			log.Printf("pgtest: set up the example database: %v", err)
			return 1
		}
	}
	if err := os.Setenv("DATABASE_URL", dbURL); err != nil {
		log.Printf("pgtest: %v", err)
		return 1
	}
	return m.Run()
}

// NewLoginRole creates a LOGIN role with no privileges and a name unique
// to tb, and returns the name and a URL connecting to the database at
// dbURL as it. Roles are global to the cluster: when tb ends, what the
// role owns and was granted in that database is dropped, then the role.
func NewLoginRole(tb testing.TB, dbURL string) (role, roleURL string) {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	role = "outbox_test_role_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE ROLE `+pgx.Identifier{role}.Sanitize()+` LOGIN`); err != nil {
		tb.Fatalf("pgtest: create role: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			tb.Errorf("pgtest: drop role: %v", err)
			return
		}
		defer conn.Close(context.Background())
		r := pgx.Identifier{role}.Sanitize()
		if _, err := conn.Exec(ctx, `DROP OWNED BY `+r+` CASCADE`); err != nil {
			tb.Errorf("pgtest: drop role: %v", err)
		}
		if _, err := conn.Exec(ctx, `DROP ROLE `+r); err != nil {
			tb.Errorf("pgtest: drop role: %v", err)
		}
	})
	return role, WithUser(dbURL, role)
}

// WithUser returns u connecting as user, with no password.
func WithUser(u, user string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return u
	}
	parsed.User = url.User(user)
	return parsed.String()
}
