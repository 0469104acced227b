package relay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// An operator's pause holds delivery on every relay at once
// (`outbox-relay pause`), for an incident or a maintenance window.
//
// It lives in the one row of outbox.control, which the claim statement
// reads itself: a claim whose snapshot sees the pause claims nothing, so
// no relay depends on having noticed it. Pause commits under the table's
// ACCESS EXCLUSIVE lock. A claim takes ACCESS SHARE on the table when it
// is parsed, before its snapshot is taken, and holds it until it commits;
// so a pause waits for the claims already reading the row, and a claim
// parsed meanwhile waits for the pause and then sees it. Once Pause has
// returned, no intent is claimed until Resume. Deliveries already under
// way finish. Resume clears the row and sends the wake-up NOTIFY, so idle
// relays claim at once rather than at their next poll.
//
// Each relay also reads the row every controlInterval, for /readyz, the
// paused metric and its log; that copy may lag by the interval, the claim
// never does.

// OperatorPause is an operator's pause of every relay.
type OperatorPause struct {
	// Since is when the pause began (database clock).
	Since time.Time `json:"since"`
	// By is the database role that paused.
	By string `json:"by"`
	// Reason is what the operator gave, possibly "".
	Reason string `json:"reason"`
}

// controlInterval is how often a relay reads outbox.control.
const controlInterval = time.Second

// pauseLockTimeout bounds how long Pause waits for the control table's
// lock. A claim holds it for milliseconds; a session that read the table
// in a transaction left open would hold it until it ends, and every claim
// queues behind a waiting pause, so give up rather than stall them.
const pauseLockTimeout = 5 * time.Second

const (
	// readControl reads the pause, if any.
	readControl = `SELECT paused_at, paused_by, reason FROM outbox.control WHERE paused_at IS NOT NULL`

	lockControl = `LOCK TABLE outbox.control IN ACCESS EXCLUSIVE MODE`

	// pauseDelivery starts a pause unless one is on (it is then left as
	// it is, so its start and author stay true).
	pauseDelivery = `
UPDATE outbox.control
   SET paused_at = now(), paused_by = session_user, reason = $1
 WHERE paused_at IS NULL`

	// resumeDelivery ends the pause and wakes idle relays.
	resumeDelivery = `
WITH ended AS (
    UPDATE outbox.control
       SET paused_at = NULL, paused_by = NULL, reason = NULL
     WHERE paused_at IS NOT NULL
    RETURNING 1
)
SELECT count(*) AS ended, pg_notify('` + notifyChannel + `', '') IS NULL AS notified FROM ended`
)

// ReadPause returns the operator's pause, or nil when delivery is not
// paused.
func ReadPause(ctx context.Context, pool *pgxpool.Pool) (*OperatorPause, error) {
	p, err := adminQueries{db: pool}.readPause(ctx)
	if err != nil {
		return nil, fmt.Errorf("read pause: %w", err)
	}
	return p, nil
}

// Pause stops every relay from claiming: once it returns, no intent is
// claimed until Resume. Deliveries under way finish. It returns the pause
// in force and whether this call started it (false: one was already on,
// and is left as it was).
func Pause(ctx context.Context, pool *pgxpool.Pool, reason string) (*OperatorPause, bool, error) {
	p, started, err := adminQueries{db: pool}.pause(ctx, pool, reason)
	if err != nil {
		return nil, false, fmt.Errorf("pause: %w", err)
	}
	if p == nil {
		return nil, false, errors.New("pause: outbox.control has no row (is the database migrated?)")
	}
	return p, started, nil
}

// Resume ends an operator's pause and wakes the relays. It reports whether
// delivery was paused.
func Resume(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	ended, err := adminQueries{db: pool}.resume(ctx)
	if err != nil {
		return false, fmt.Errorf("resume: %w", err)
	}
	return ended, nil
}

// operatorPause is the relay's copy of outbox.control.
type operatorPause struct {
	current atomic.Pointer[OperatorPause]
}

func (o *operatorPause) get() *OperatorPause { return o.current.Load() }

// controlReader is the service that reads outbox.control every
// controlInterval, and flushes the warnings held back meanwhile. Its
// goroutine owns the relay's copy of the operator's pause (Health reads
// it); Relay.Start reads it once before the services start.
type controlReader struct {
	serviceEnv
	cfg         controlReaderConfig
	warns       *warnEvery // flushed: the retryable failures not logged yet
	updateReady func()     // the readiness gauge follows the pause
	operator    operatorPause
	startStop
}

func newControlReader(env serviceEnv, cfg controlReaderConfig, warns *warnEvery, updateReady func()) *controlReader {
	return &controlReader{serviceEnv: env, cfg: cfg, warns: warns, updateReady: updateReady,
		startStop: startStop{name: "control reader"}}
}

// Start reads in the background until Stop.
func (c *controlReader) Start(ctx context.Context) error { return c.start(ctx, c.loop) }

// Stop waits for the read under way (bounded) and stops.
func (c *controlReader) Stop(ctx context.Context) error { return c.stop(ctx) }

func (c *controlReader) loop(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			opCtx, cancel := context.WithTimeout(ctx, c.cfg.Interval)
			c.read(opCtx)
			cancel()
			c.warns.flush(c.log)
		}
	}
}

// read refreshes the relay's copy of the operator's pause, and says so
// when it changed.
func (c *controlReader) read(ctx context.Context) {
	p, err := ReadPause(ctx, c.q.db)
	if err != nil {
		if ctx.Err() == nil {
			c.setDB(false, "read_control", err)
		}
		return
	}
	c.setDB(true, "", nil)
	prev := c.operator.current.Swap(p)
	if (prev == nil) == (p == nil) {
		return
	}
	v := 0.0
	if p != nil {
		v = 1
		c.log.Warn("delivery paused by an operator: claiming nothing until `outbox-relay resume`",
			"since", p.Since, "by", p.By, "reason", p.Reason)
	} else {
		c.log.Info("delivery resumed by an operator")
	}
	c.metrics.paused.WithLabelValues(pauseOperator).Set(v)
	c.updateReady()
	c.wake()
}

// pauseOperator is the paused metric's reason for an operator's pause.
const pauseOperator = "operator"
