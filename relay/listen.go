package relay

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	listenRetryMin       = 100 * time.Millisecond
	listenRetryMax       = 2 * time.Second
	listenConnectTimeout = 10 * time.Second
)

// listener is the service that keeps a dedicated connection LISTENing,
// and wakes the claimer (a producer's NOTIFY) or the lease keeper (a
// relay came or went). Its goroutine owns that connection and the
// listening flag (read by the claimer and Health).
type listener struct {
	serviceEnv
	cfg      listenerConfig
	connCfg  *pgx.ConnConfig // copied for each connection
	notified func()          // a producer's NOTIFY arrived: wakes the claimer
	relays   func()          // a relay came or went: the lease keeper beats
	startStop

	listening atomic.Bool // the LISTEN connection is up
}

func newListener(env serviceEnv, cfg listenerConfig, notified, relays func()) *listener {
	return &listener{serviceEnv: env, cfg: cfg, connCfg: env.q.db.Config().ConnConfig, notified: notified,
		relays: relays, startStop: startStop{name: "listener"}}
}

// Start listens in the background until Stop.
func (l *listener) Start(ctx context.Context) error { return l.start(ctx, l.loop) }

// Stop closes the connection and waits for the service to end.
func (l *listener) Stop(ctx context.Context) error { return l.stop(ctx) }

// loop keeps a dedicated connection LISTENing for wake-ups, and
// reconnects with backoff when it is lost. Every (re)connect wakes the
// claimer, since notifications sent while disconnected are gone.
func (l *listener) loop(ctx context.Context) {
	retry := l.cfg.RetryMin
	for ctx.Err() == nil {
		err := l.listen(ctx)
		l.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		l.metrics.listenerErrors.Inc()
		l.log.Warn("listen connection lost; reconnecting", "error", err, "retry_in", retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		retry = min(2*retry, l.cfg.RetryMax)
		if err == nil {
			retry = l.cfg.RetryMin
		}
	}
}

// listen connects, LISTENs, and forwards notifications until an error.
func (l *listener) listen(ctx context.Context) error {
	cfg := l.connCfg.Copy()
	connectCtx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout)
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	l.listening.Store(true)
	l.wake()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Payload == relaysPayload {
			// A relay came or went: nothing to claim, a rate to share.
			l.relays()
			continue
		}
		l.metrics.notifications.Inc()
		l.notified()
	}
}
