package relay_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/relay"
)

// A pool made with ConfigurePool bounds every statement and lock wait of
// its sessions well inside the lease: at the default lease, at the
// shortest lease a relay accepts, and at a long one.
func TestConfigurePoolBoundsStatements(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	for _, tc := range []struct {
		lease           time.Duration
		statement, lock string
	}{
		{0, "2500ms", "1s"},
		{time.Second, "250ms", "125ms"},
		{100 * time.Millisecond, "250ms", "125ms"},
		{time.Minute, "5s", "1s"},
	} {
		pool := pgtest.Pool(t, dbURL, func(pc *pgxpool.Config) { relay.ConfigurePool(pc, relay.Config{Lease: tc.lease}) })
		var statement, lock string
		err := pool.QueryRow(t.Context(),
			`SELECT current_setting('statement_timeout'), current_setting('lock_timeout')`).Scan(&statement, &lock)
		pool.Close()
		if err != nil {
			t.Fatal(err)
		}
		if statement != tc.statement || lock != tc.lock {
			t.Errorf("lease %s: statement_timeout %s, lock_timeout %s; want %s, %s",
				tc.lease, statement, lock, tc.statement, tc.lock)
		}
	}
}
