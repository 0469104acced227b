// Package migrations holds the relay's SQL schema as numbered goose
// migrations, embedded in the binary, and applies them.
//
// Everything lives in the outbox schema, including goose's version table
// (outbox.goose_db_version), so the relay never touches an application's own
// goose table. Applying is idempotent and safe to run from several processes
// at once: a Postgres advisory lock serialises them.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// FS returns the embedded migration files.
func FS() fs.FS { return files }

// VersionTable is goose's version table, inside the outbox schema.
const VersionTable = "outbox.goose_db_version"

// lockID is the advisory lock held while migrating ("outbox-m" in ASCII).
const lockID = 0x6f7574626f782d6d

// Result reports what Up did.
type Result struct {
	// Applied lists the versions applied by this call (empty when the
	// database was already up to date).
	Applied []int64
	// Version is the schema version after the call.
	Version int64
}

// Up applies every pending migration to the database at connString. It
// creates the outbox schema first, under the same advisory lock goose then
// holds, so several relays starting at once on an empty database cannot race.
func Up(ctx context.Context, connString string, logger *slog.Logger) (Result, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return Result{}, fmt.Errorf("parse database url: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	res, err := up(ctx, db, logger)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == codeInsufficientPrivilege {
		// A relay started with a least-privilege role and migrations on.
		return res, fmt.Errorf("%w (migrations run as the owner of schema outbox; a relay connecting as another role sets OUTBOX_MIGRATE=false)", err)
	}
	return res, err
}

// codeInsufficientPrivilege is SQLSTATE 42501, "permission denied".
const codeInsufficientPrivilege = "42501"

func up(ctx context.Context, db *sql.DB, logger *slog.Logger) (Result, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := createSchema(ctx, db); err != nil {
		return Result{}, err
	}
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(lockID),
		// Poll every second for up to ten minutes while another process migrates.
		lock.WithLockTimeout(1, 600),
	)
	if err != nil {
		return Result{}, fmt.Errorf("migrate: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files,
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
	if err != nil {
		return Result{}, fmt.Errorf("migrate: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		var partial *goose.PartialError
		if errors.As(err, &partial) && partial.Failed != nil {
			return Result{}, fmt.Errorf("migrate: migration %d (%s): %w",
				partial.Failed.Source.Version, partial.Failed.Source.Path, partial.Err)
		}
		return Result{}, fmt.Errorf("migrate: %w", err)
	}
	var res Result
	for _, r := range results {
		if !r.Empty {
			res.Applied = append(res.Applied, r.Source.Version)
		}
	}
	if res.Version, err = p.GetDBVersion(ctx); err != nil {
		return Result{}, fmt.Errorf("migrate: read version: %w", err)
	}
	return res, nil
}

// createSchema creates the outbox schema under a transaction-scoped advisory
// lock: two concurrent CREATE SCHEMA IF NOT EXISTS can otherwise both decide
// to create it and one fails with a unique violation.
func createSchema(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: create schema: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(lockID)); err != nil {
		return fmt.Errorf("migrate: create schema: lock: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS outbox`); err != nil {
		return fmt.Errorf("migrate: create schema: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: create schema: %w", err)
	}
	return nil
}
