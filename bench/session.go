package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/provider/talkjs"
)

// session is one system on one fresh scratch database, with its own pool
// and TalkJS client.
type session struct {
	e      *env
	spec   systemSpec
	db     scratch
	pool   *pgxpool.Pool
	client *talkjs.Client
	r      relayRunner
	tag    string // makes this run's TalkJS ids unique
	// more are further relays of the same system on the same database,
	// each with its own pool and TalkJS client (see addRelays).
	more []*peer
}

// peer is one more relay of a session's system, as another process of a
// deployment would run it: its own pool, TalkJS client and runner.
type peer struct {
	pool   *pgxpool.Pool
	client *talkjs.Client
	r      relayRunner
}

// addRelays adds k relays of the session's system on its database, not
// started. rateLimit caps each one's TalkJS client (0: none).
func (s *session) addRelays(ctx context.Context, k int, rateLimit float64) error {
	for range k {
		p := &peer{}
		s.more = append(s.more, p)
		var err error
		if p.pool, err = relayPool(ctx, s.db.url, appName(s.spec)); err != nil {
			return fmt.Errorf("%s: pool: %w", s.spec.label, err)
		}
		if p.client, err = talkjs.New(s.e.clientConfig(rateLimit)); err != nil {
			return fmt.Errorf("%s: talkjs client: %w", s.spec.label, err)
		}
		if p.r, err = s.spec.make(p.pool, p.client, s.e.log); err != nil {
			return fmt.Errorf("%s: %w", s.spec.label, err)
		}
	}
	return nil
}

// relays returns every relay of the session, the first one first.
func (s *session) relays() []relayRunner {
	rs := []relayRunner{s.r}
	for _, p := range s.more {
		rs = append(rs, p.r)
	}
	return rs
}

// open clones the system's template and builds the system, not started.
// rateLimit caps the TalkJS client's requests per second (0: none).
func (e *env) open(ctx context.Context, spec systemSpec, rateLimit float64) (*session, error) {
	db, err := e.clone(ctx, spec.template)
	if err != nil {
		return nil, err
	}
	s := &session{e: e, spec: spec, db: db, tag: fmt.Sprintf("r%d", e.seq.Add(1))}
	if s.pool, err = relayPool(ctx, db.url, appName(spec)); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: pool: %w", spec.label, err)
	}
	if s.client, err = talkjs.New(e.clientConfig(rateLimit)); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: talkjs client: %w", spec.label, err)
	}
	if s.r, err = spec.make(s.pool, s.client, e.log); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %w", spec.label, err)
	}
	return s, nil
}

// close stops the relays and drops the database.
func (s *session) close() {
	if s.r != nil {
		s.r.stop()
	}
	for _, p := range s.more {
		if p.r != nil {
			p.r.stop()
		}
		if p.client != nil {
			_ = p.client.Close()
		}
		if p.pool != nil {
			p.pool.Close()
		}
	}
	if s.client != nil {
		_ = s.client.Close()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	s.e.drop(s.db.name)
}

// prepareBacklog runs ANALYZE and CHECKPOINT after a bulk load, so that the
// drain starts from planner statistics a live table would have and does not
// pay for the load's checkpoint.
func (s *session) prepareBacklog(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("analyze: %w", err)
	}
	if _, err := s.pool.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// waitMessages waits until the fake has stored want messages.
func (e *env) waitMessages(ctx context.Context, want int) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		if e.fake.MessageCount() >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fake has %d of %d messages: %w", e.fake.MessageCount(), want, ctx.Err())
		case <-t.C:
		}
	}
}

// waitDrained waits until the system reports nothing left to deliver.
func (s *session) waitDrained(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		n, err := s.r.remaining(ctx)
		if err == nil && n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%s: %w (last query error: %w)", s.spec.label, ctx.Err(), err)
			}
			return fmt.Errorf("%s: %d intents still undelivered: %w", s.spec.label, n, ctx.Err())
		case <-t.C:
		}
	}
}

// verify checks that exactly n intents were delivered and the fake holds
// exactly their messages.
func (s *session) verify(ctx context.Context, n, messages int) error {
	got, err := s.r.delivered(ctx)
	if err != nil {
		return fmt.Errorf("%s: count delivered: %w", s.spec.label, err)
	}
	if got != int64(n) {
		return fmt.Errorf("%s: %d of %d intents recorded as delivered", s.spec.label, got, n)
	}
	if m := s.e.fake.MessageCount(); m != messages {
		return fmt.Errorf("%s: fake holds %d messages, want %d", s.spec.label, m, messages)
	}
	return nil
}
