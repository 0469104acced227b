package relay

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	listenRetryMin = 100 * time.Millisecond
	listenRetryMax = 2 * time.Second
)

// listener is the service that keeps a dedicated connection LISTENing,
// and wakes the claimer (notified) or the lease keeper (relaysChanged).
type listener struct {
	r *Relay
	startStop
}

func newListener(r *Relay) *listener { return &listener{r: r, startStop: startStop{name: "listener"}} }

// Start listens in the background until Stop.
func (l *listener) Start(ctx context.Context) error { return l.start(ctx, l.r.listenLoop) }

// Stop closes the connection and waits for the service to end.
func (l *listener) Stop(ctx context.Context) error { return l.stop(ctx) }

// listenLoop keeps a dedicated connection LISTENing for wake-ups, and
// reconnects with backoff when it is lost. Every (re)connect wakes the
// claimer, since notifications sent while disconnected are gone.
func (r *Relay) listenLoop(ctx context.Context) {
	retry := listenRetryMin
	for ctx.Err() == nil {
		err := r.listen(ctx)
		r.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		r.metrics.listenerErrors.Inc()
		r.log.Warn("listen connection lost; reconnecting", "error", err, "retry_in", retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		retry = min(2*retry, listenRetryMax)
		if err == nil {
			retry = listenRetryMin
		}
	}
}

// listen connects, LISTENs, and forwards notifications until an error.
func (r *Relay) listen(ctx context.Context) error {
	cfg := r.pool.Config().ConnConfig.Copy()
	connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	r.listening.Store(true)
	r.signal()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Payload == relaysPayload {
			// A relay came or went: nothing to claim, a rate to share.
			select {
			case r.relaysChanged <- struct{}{}:
			default:
			}
			continue
		}
		r.metrics.notifications.Inc()
		select {
		case r.notified <- struct{}{}:
		default:
		}
	}
}
