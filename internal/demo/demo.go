// Package demo runs outbox-relay end to end on a developer's machine: real
// Postgres, the fake TalkJS over loopback HTTP, a few order intents written
// in the same transaction as their orders, delivered, and reported.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgcluster"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Options configure Run.
type Options struct {
	// DatabaseURL is a server to use; empty tries 127.0.0.1:5432 and then a
	// throwaway cluster.
	DatabaseURL string
	// Out receives the report; Log receives progress lines.
	Out, Log io.Writer
}

const (
	demoAppID  = "demo-app"
	demoSecret = "sk_demo_not_a_real_secret"
	// The fake refuses this user, so one intent goes dead with its error.
	rejectedUser = "mallory"
)

// Run executes the demo. It cleans up everything it created.
func Run(ctx context.Context, opts Options) error {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(opts.Log, "demo: "+format+"\n", args...) }

	adminURL, cleanup, err := findServer(ctx, opts.DatabaseURL, say)
	if err != nil {
		return err
	}
	defer cleanup()

	dbURL, dropDB, err := scratchDatabase(ctx, adminURL)
	if err != nil {
		return err
	}
	defer dropDB()
	say("scratch database:\n  %s", pgcluster.Redact(dbURL))

	if _, err := migrations.Up(ctx, dbURL, nil); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()

	// The fake TalkJS, over real loopback HTTP, failing 20% of calls after
	// applying them so the retries and idempotency keys show.
	fake := faketalkjs.New(faketalkjs.Config{AppID: demoAppID, SecretKey: demoSecret, Seed: 1,
		Faults: faketalkjs.Faults{FailAfter: 0.2, RejectUserIDs: []string{rejectedUser}}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	baseURL := "http://" + ln.Addr().String()
	say("fake TalkJS at %s\n  (20%% of calls answer 500 after being applied; user %q is refused)", baseURL, rejectedUser)

	ids, err := placeOrders(ctx, pool)
	if err != nil {
		return err
	}
	say("placed %d orders, each with its conversation-start intent\n  in the same transaction", len(ids))

	client, err := talkjs.New(talkjs.Config{AppID: demoAppID, SecretKey: demoSecret, BaseURL: baseURL})
	if err != nil {
		return err
	}
	defer client.Close()
	r, err := relay.New(pool, client, relay.Config{
		Name:   "demo-relay",
		Retry:  relay.RetryPolicy{Base: 50 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(opts.Log, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	defer r.Stop()
	say("relay started; waiting for every intent to be done or dead")
	if err := waitSettled(ctx, pool, 60*time.Second); err != nil {
		return err
	}
	r.Stop()

	return report(ctx, opts.Out, pool, fake)
}

// findServer picks the Postgres server: the given URL, the local default,
// or a throwaway cluster (removed by the returned cleanup).
func findServer(ctx context.Context, given string, say func(string, ...any)) (string, func(), error) {
	nothing := func() {}
	if given != "" {
		if err := pgcluster.Ping(ctx, given, 5*time.Second); err != nil {
			return "", nothing, fmt.Errorf("DATABASE_URL: cannot connect to %s: %w", pgcluster.Redact(given), err)
		}
		say("using DATABASE_URL:\n  %s", pgcluster.Redact(given))
		return given, nothing, nil
	}
	if err := pgcluster.Ping(ctx, pgcluster.DefaultURL, 3*time.Second); err == nil {
		say("using the local server at 127.0.0.1:5432")
		return pgcluster.DefaultURL, nothing, nil
	}
	if _, err := pgcluster.Binaries(); err != nil {
		return "", nothing, errors.New("no Postgres found: set DATABASE_URL to a server you can create databases on, " +
			"start one at 127.0.0.1:5432 (user postgres), or install the PostgreSQL server binaries " +
			"(Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) so the demo can start a throwaway one")
	}
	say("no server at 127.0.0.1:5432;\n  starting a throwaway cluster with initdb/pg_ctl")
	c, err := pgcluster.Start(ctx)
	if err != nil {
		return "", nothing, err
	}
	return c.URL("postgres"), func() {
		if err := c.Remove(); err != nil {
			say("removing the throwaway cluster: %v", err)
		}
	}, nil
}

func scratchDatabase(ctx context.Context, adminURL string) (string, func(), error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "outbox_relay_demo_" + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("create scratch database (the demo needs CREATEDB): %w", err)
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	}
	return u.String(), drop, nil
}

type order struct {
	id       string
	buyer    outbox.User
	seller   outbox.User
	greeting string
}

// placeOrders writes each order and its intent in one transaction, the way
// an application does.
func placeOrders(ctx context.Context, pool *pgxpool.Pool) ([]int64, error) {
	if _, err := pool.Exec(ctx, `CREATE TABLE demo_orders (id text PRIMARY KEY, buyer text NOT NULL, placed_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("create orders table: %w", err)
	}
	seller := outbox.User{ID: "shop", Name: "Corner Shop", Email: []string{"shop@example.com"}, Role: "seller"}
	person := func(id, name string) outbox.User {
		return outbox.User{ID: id, Name: name, Email: []string{id + "@example.com"}, Role: "buyer",
			Custom: map[string]string{"tier": "gold"}}
	}
	orders := []order{
		{"1001", person("alice", "Alice"), seller, "Hi! Where is my parcel?"},
		{"1002", person("bob", "Bob"), seller, "Can I change the size?"},
		{"1003", person("carol", "Carol"), seller, "Thanks for the quick delivery."},
		{"1004", person(rejectedUser, "Mallory"), seller, "This one is refused by TalkJS."},
		{"1005", person("dave", "Dave"), seller, "Is gift wrapping available?"},
	}
	var ids []int64
	for _, o := range orders {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO demo_orders (id, buyer) VALUES ($1, $2)`, o.id, o.buyer.ID); err != nil {
				return err
			}
			id, err := outbox.Enqueue(ctx, tx, outbox.Intent{
				Users: []outbox.User{o.buyer, o.seller},
				Conversation: outbox.Conversation{ID: "order_" + o.id, Subject: "Order #" + o.id,
					Custom: map[string]string{"orderId": o.id}},
				Messages: []outbox.Message{
					{Type: outbox.SystemMessage, Text: "Order #" + o.id + " placed"},
					{Sender: o.buyer.ID, Text: o.greeting},
				},
			}, outbox.WithKey("order-"+o.id))
			ids = append(ids, id)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("place order %s: %w", o.id, err)
		}
	}
	return ids, nil
}

func waitSettled(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var open int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE state IN ('pending', 'delivering')`).Scan(&open); err != nil {
			return err
		}
		if open == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d intents still open after %s", open, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func report(ctx context.Context, w io.Writer, pool *pgxpool.Pool, fake *faketalkjs.Server) error {
	st, err := relay.ReadStatus(ctx, pool, 0)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "Intents (outbox.intents; latency is commit to done):")
	rows, err := pool.Query(ctx, `
SELECT i.id, coalesce(i.key, ''), i.state, i.attempts,
       (SELECT count(*) FROM outbox.attempts a WHERE a.intent_id = i.id) AS calls,
       i.done_at - i.created_at AS latency,
       coalesce(i.last_error, '')
  FROM outbox.intents i ORDER BY i.id`)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tKEY\tSTATE\tATTEMPTS\tCALLS\tLATENCY")
	type failure struct{ key, err string }
	var failures []failure
	for rows.Next() {
		var id, calls int64
		var key, state, lastErr string
		var attempts int
		var latency *time.Duration
		if err := rows.Scan(&id, &key, &state, &attempts, &calls, &latency, &lastErr); err != nil {
			rows.Close()
			return err
		}
		lat := "-"
		if latency != nil {
			lat = latency.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%d\t%d\t%s\n", id, key, state, attempts, calls, lat)
		if state == "dead" {
			failures = append(failures, failure{key, lastErr})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	_ = tw.Flush()
	for _, f := range failures {
		fmt.Fprintf(w, "\n%s is dead; its last_error:\n", f.key)
		for _, line := range wrap(shorten(f.err, 300), width-4) {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}

	fmt.Fprintf(w, "\nStatus: pending %d, delivering %d, done %d, dead %d\n",
		st.Counts[relay.StatePending], st.Counts[relay.StateDelivering], st.Counts[relay.StateDone], st.Counts[relay.StateDead])

	stats := fake.Stats()
	fmt.Fprintf(w, "\nThe fake TalkJS received %d requests (%d answered 500 after applying\n",
		stats.Requests, stats.Faults[faketalkjs.FaultFailAfter])
	fmt.Fprintf(w, "them) and holds %d users, %d conversations, %d messages (%d duplicate\n",
		stats.Users, stats.Conversations, stats.Messages, stats.DuplicatesSuppressed)
	fmt.Fprintln(w, "posts suppressed by idempotencyKey):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  CONVERSATION\tSENDER\tTEXT")
	for _, m := range fake.AllMessages() {
		sender := m.Sender
		if sender == "" {
			sender = "(system)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", m.ConversationID, sender, m.Text)
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\nAsk the database what happened to one order:")
	fmt.Fprintln(w, "  SELECT step, target, status, outcome, error FROM outbox.attempts")
	fmt.Fprintln(w, "   WHERE intent_id = (SELECT id FROM outbox.intents")
	fmt.Fprintln(w, "                       WHERE key = 'order-1004')")
	fmt.Fprintln(w, "   ORDER BY id;")
	return nil
}

// width is the terminal width the report fits in.
const width = 80

// wrap breaks s at spaces into lines of at most n runes (a longer word
// is cut).
func wrap(s string, n int) []string {
	var lines []string
	var cur []rune
	for _, word := range strings.Fields(s) {
		r := []rune(word)
		for len(r) > n {
			if len(cur) > 0 {
				lines, cur = append(lines, string(cur)), nil
			}
			lines, r = append(lines, string(r[:n])), r[n:]
		}
		switch {
		case len(cur) == 0:
			cur = r
		case len(cur)+1+len(r) <= n:
			cur = append(append(cur, ' '), r...)
		default:
			lines, cur = append(lines, string(cur)), r
		}
	}
	if len(cur) > 0 {
		lines = append(lines, string(cur))
	}
	return lines
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}
