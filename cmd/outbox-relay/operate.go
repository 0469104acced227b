package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/relay"
)

// errNotFound marks a command whose named intents do not all exist (exit 3).
var errNotFound = errors.New("not found")

const exitCodesHelp = `
Exit codes: 0 done; 1 failed (database unreachable, bad configuration);
2 wrong usage; 3 an intent named does not exist.
`

const statusHelp = `Usage: outbox-relay status [--dead N] [--json]

Prints intent counts by state, the lag (age of the next deliverable intent),
the age of the oldest pending intent, whether an operator paused delivery,
the failed calls of the last hour by step, the live relays with their
versions, and the most recent dead intents.
With --json: one object; counts keyed by state name, durations in seconds.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdStatus(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("status", statusHelp, stderr)
	deadLimit := fs.Int("dead", 10, "how many dead intents to list")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *deadLimit < 0 {
		fmt.Fprintln(stderr, "status: --dead must not be negative")
		return errUsage
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := relay.ReadStatus(ctx, pool, *deadLimit)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, statusJSON(st))
	}
	printStatus(stdout, st)
	return nil
}

// statusDoc is the JSON form of status: durations in seconds, timestamps
// in RFC 3339.
type statusDoc struct {
	Counts         map[relay.State]int64 `json:"counts"`
	DoneEstimated  bool                  `json:"done_estimated"`
	LagS           float64               `json:"lag_s"`
	OldestPendingS float64               `json:"oldest_pending_s"`
	FailedLastHour []relay.FailedCalls   `json:"failed_calls_last_hour"`
	Relays         []relayDoc            `json:"relays"`
	Dead           []deadDoc             `json:"dead"`
	// Paused is the operator's pause, null when there is none.
	Paused *relay.OperatorPause `json:"paused"`
}

type relayDoc struct {
	ID          string    `json:"id"`
	Version     string    `json:"version"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
}

type deadDoc struct {
	ID             int64     `json:"id"`
	Key            *string   `json:"key"`
	ConversationID string    `json:"conversation_id"`
	Attempts       int       `json:"attempts"`
	LastError      *string   `json:"last_error"`
	DiedAt         time.Time `json:"died_at"`
}

func statusJSON(st relay.Status) statusDoc {
	doc := statusDoc{
		Counts:         st.Counts,
		DoneEstimated:  st.DoneEstimated,
		LagS:           st.Lag.Seconds(),
		OldestPendingS: st.OldestPending.Seconds(),
		FailedLastHour: st.FailedCalls,
		Relays:         []relayDoc{},
		Dead:           []deadDoc{},
		Paused:         st.Paused,
	}
	if doc.FailedLastHour == nil {
		doc.FailedLastHour = []relay.FailedCalls{}
	}
	for _, r := range st.Relays {
		doc.Relays = append(doc.Relays, relayDoc{ID: r.ID, Version: r.Version, StartedAt: r.StartedAt, HeartbeatAt: r.HeartbeatAt})
	}
	for _, d := range st.Dead {
		doc.Dead = append(doc.Dead, deadDoc{ID: d.ID, Key: d.Key, ConversationID: d.ConversationID,
			Attempts: d.Attempts, LastError: d.LastError, DiedAt: d.UpdatedAt})
	}
	return doc
}

func printStatus(w io.Writer, st relay.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tCOUNT")
	for _, s := range relay.States() {
		if s == relay.StateDone && st.DoneEstimated {
			fmt.Fprintf(tw, "%s\t~%d (estimate)\n", s, st.Counts[s])
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\n", s, st.Counts[s])
	}
	_ = tw.Flush()
	if st.Paused != nil {
		fmt.Fprintf(w, "\ndelivery %s\n", describePause(st.Paused))
	} else {
		fmt.Fprintln(w, "\ndelivery not paused")
	}
	fmt.Fprintf(w, "lag: %s\n", st.Lag.Round(time.Millisecond))
	fmt.Fprintf(w, "oldest pending: %s\n", st.OldestPending.Round(time.Millisecond))
	if len(st.FailedCalls) > 0 {
		fmt.Fprintln(w, "failed calls in the last hour:")
		for _, f := range st.FailedCalls {
			fmt.Fprintf(w, "  %s %s: %d\n", f.Step, f.Outcome, f.Calls)
		}
	}
	fmt.Fprintf(w, "live relays: %d\n", len(st.Relays))
	for _, r := range st.Relays {
		fmt.Fprintf(w, "  %s (version %s, up %s)\n", r.ID, r.Version, r.HeartbeatAt.Sub(r.StartedAt).Round(time.Second))
	}
	if len(st.Dead) > 0 {
		fmt.Fprintln(w, "\nrecent dead intents:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKEY\tCONVERSATION\tATTEMPTS\tLAST ERROR")
		for _, d := range st.Dead {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", d.ID, deref(d.Key), d.ConversationID, d.Attempts, oneLine(deref(d.LastError), 120))
		}
		_ = tw.Flush()
	}
}

const inspectHelp = `Usage: outbox-relay inspect ID | outbox-relay inspect --key KEY [--json]

Prints one intent (by id, or by the idempotency key its application chose):
its state, payload and every call recorded for it, in order.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdInspect(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", inspectHelp, stderr)
	key := fs.String("key", "", "the intent's idempotency key")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	ids, err := parseIDs("inspect", pos, stderr)
	if err != nil {
		return err
	}
	if (len(ids) == 1) == (*key != "") || len(ids) > 1 {
		fmt.Fprint(stderr, "inspect: give one intent id or --key\n\n", inspectHelp)
		return errUsage
	}
	var id int64
	if len(ids) == 1 {
		id = ids[0]
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	in, calls, err := relay.Inspect(ctx, pool, id, *key)
	if errors.Is(err, relay.ErrNotFound) {
		return fmt.Errorf("%w: no intent %s", errNotFound, describe(id, *key))
	}
	if err != nil {
		return err
	}
	if *asJSON {
		if calls == nil {
			calls = []relay.Call{}
		}
		return writeJSON(stdout, struct {
			relay.Intent
			Calls []relay.Call `json:"calls"`
		}{in, calls})
	}
	printIntent(stdout, in, calls)
	return nil
}

func describe(id int64, key string) string {
	if key != "" {
		return fmt.Sprintf("with key %q", key)
	}
	return strconv.FormatInt(id, 10)
}

func printIntent(w io.Writer, in relay.Intent, calls []relay.Call) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("id", strconv.FormatInt(in.ID, 10))
	row("key", deref(in.Key))
	row("conversation", in.ConversationID)
	row("state", string(in.State))
	row("attempts", strconv.Itoa(in.Attempts))
	row("created", in.CreatedAt.Format(time.RFC3339Nano))
	if in.DoneAt != nil {
		row("done", fmt.Sprintf("%s (%s after insert)", in.DoneAt.Format(time.RFC3339Nano),
			in.DoneAt.Sub(in.CreatedAt).Round(time.Millisecond)))
	}
	if in.State == relay.StatePending {
		row("next attempt", in.RunAfter.Format(time.RFC3339Nano))
	}
	if in.LeaseOwner != nil {
		row("held by", *in.LeaseOwner)
	}
	if in.LastError != nil {
		row("last error", oneLine(*in.LastError, 200))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\npayload: %s\n", in.Payload)
	fmt.Fprintf(w, "\ncalls: %d\n", len(calls))
	if len(calls) == 0 {
		return
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STARTED\tATTEMPT\tSTEP\tTARGET\tSTATUS\tOUTCOME\tSECONDS\tRELAY\tBATCH CALL\tERROR")
	for _, c := range calls {
		status := "-"
		if c.Status != nil {
			status = strconv.Itoa(*c.Status)
		}
		// The rows of one batch call share its id (see --json for it in
		// full); "-" for a call made for this intent alone.
		call := "-"
		if c.CallID != nil {
			call = (*c.CallID)[:min(8, len(*c.CallID))]
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\n", c.StartedAt.Format(time.RFC3339Nano),
			c.Attempt, c.Step, c.Target, status, c.Outcome, c.DurationS, c.Relay, call, oneLine(deref(c.Error), 80))
	}
	_ = tw.Flush()
}

// selectionFlags are the flags retry, cancel and purge share.
type selectionFlags struct {
	key       *string
	since     *string
	errorLike *string
	limit     *int
	dryRun    *bool
	asJSON    *bool
}

func addSelectionFlags(fs *flag.FlagSet, withFilters bool) selectionFlags {
	f := selectionFlags{
		key:    fs.String("key", "", "the intent with this idempotency key"),
		limit:  fs.Int("limit", 0, "act on at most N intents, lowest ids first (0: no cap)"),
		dryRun: fs.Bool("dry-run", false, "list what would change, change nothing"),
		asJSON: fs.Bool("json", false, "print JSON"),
	}
	if withFilters {
		f.since = fs.String("since", "", "only intents that changed state since T (RFC 3339 time, or a duration ago such as 2h)")
		f.errorLike = fs.String("error-like", "", "only intents whose last_error matches this ILIKE pattern (e.g. '%status 400%')")
	}
	return f
}

// selection builds the relay.Selection of a command's flags and ids.
func (f selectionFlags) selection(cmd string, ids []int64, now time.Time, stderr io.Writer) (relay.Selection, error) {
	sel := relay.Selection{IDs: ids, Key: *f.key, Limit: *f.limit}
	if *f.limit < 0 {
		fmt.Fprintf(stderr, "%s: --limit must not be negative, got %d\n", cmd, *f.limit)
		return sel, errUsage
	}
	if f.since != nil && *f.since != "" {
		t, err := parseSince(*f.since, now)
		if err != nil {
			fmt.Fprintf(stderr, "%s: --since: %v\n", cmd, err)
			return sel, errUsage
		}
		sel.Since = t
	}
	if f.errorLike != nil {
		sel.ErrorLike = *f.errorLike
	}
	return sel, nil
}

// parseSince reads an RFC 3339 time, or a duration meaning that long ago.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration ago (2h), got %q", s)
	}
	return now.Add(-d), nil
}

// parseArgs parses flags that may come before, between or after the
// positional arguments (Go's flag package stops at the first positional
// one), and returns the positional ones. "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

func parseIDs(cmd string, args []string, stderr io.Writer) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			fmt.Fprintf(stderr, "%s: %q is not an intent id (a positive integer)\n", cmd, a)
			return nil, errUsage
		}
		ids = append(ids, id)
	}
	return ids, nil
}

const retryHelp = `Usage: outbox-relay retry ID... | --key KEY | --all-dead | --since T | --error-like P
                          [--limit N] [--dry-run] [--json]

Puts dead intents back to pending with a fresh retry budget and wakes the
relays. Named intents (ids, --key) that are not dead are left alone and
reported. --all-dead, --since and --error-like select among dead intents;
--since and --error-like also narrow named ones.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdRetry(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("retry", retryHelp, stderr)
	allDead := fs.Bool("all-dead", false, "retry every dead intent")
	f := addSelectionFlags(fs, true)
	return runAction(ctx, "retry", "retried", fs, args, f, allDead, env, stdout, stderr, relay.Retry)
}

const cancelHelp = `Usage: outbox-relay cancel ID... | --key KEY [--dry-run] [--json]

Stops pending intents: each goes dead with the reason "cancelled by
operator", and the intents after it in its conversation go ahead. An intent
being delivered, done or dead is left alone and reported.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdCancel(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("cancel", cancelHelp, stderr)
	f := addSelectionFlags(fs, false)
	return runAction(ctx, "cancel", "cancelled", fs, args, f, nil, env, stdout, stderr, relay.Cancel)
}

const purgeHelp = `Usage: outbox-relay purge --dead --older-than D [--limit N] [--dry-run] [--json]

Deletes dead intents (and their calls) that died more than D ago, e.g. 720h.
Dead intents are otherwise kept until retried.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdPurge(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("purge", purgeHelp, stderr)
	dead := fs.Bool("dead", false, "purge dead intents (required: the only kind purge deletes)")
	olderThan := fs.Duration("older-than", 0, "only intents dead for longer than this (required)")
	limit := fs.Int("limit", 0, "delete at most N intents, lowest ids first (0: no cap)")
	dryRun := fs.Bool("dry-run", false, "list what would be deleted, delete nothing")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "purge: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	case !*dead:
		fmt.Fprint(stderr, "purge: --dead is required\n\n", purgeHelp)
		return errUsage
	case *olderThan <= 0:
		fmt.Fprint(stderr, "purge: --older-than must be a positive duration, e.g. 720h\n\n", purgeHelp)
		return errUsage
	case *limit < 0:
		fmt.Fprintf(stderr, "purge: --limit must not be negative, got %d\n", *limit)
		return errUsage
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	sel := relay.Selection{Before: time.Now().Add(-*olderThan), Limit: *limit}
	res, err := relay.Purge(ctx, pool, sel, *dryRun)
	if err != nil {
		return err
	}
	return reportAction(stdout, "purged", res, nil, *dryRun, *asJSON)
}

type actionFunc func(context.Context, *pgxpool.Pool, relay.Selection, bool) (relay.Action, error)

// runAction parses a retry or cancel command line, runs it, and reports.
func runAction(ctx context.Context, cmd, done string, fs *flag.FlagSet, args []string, f selectionFlags,
	all *bool, env envconfig.Lookuper, stdout, stderr io.Writer, do actionFunc) error {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	ids, err := parseIDs(cmd, pos, stderr)
	if err != nil {
		return err
	}
	sel, err := f.selection(cmd, ids, time.Now(), stderr)
	if err != nil {
		return err
	}
	sel.All = all != nil && *all
	named := len(ids) > 0 || sel.Key != ""
	filtered := sel.All || !sel.Since.IsZero() || sel.ErrorLike != ""
	switch {
	case !named && !filtered:
		fmt.Fprintf(stderr, "%s: say which intents\n\n", cmd)
		fs.Usage()
		return errUsage
	case len(ids) > 0 && sel.Key != "":
		fmt.Fprintf(stderr, "%s: give intent ids or --key, not both\n", cmd)
		return errUsage
	case named && sel.All:
		fmt.Fprintf(stderr, "%s: give either intents or --all-dead, not both\n", cmd)
		return errUsage
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	res, err := do(ctx, pool, sel, *f.dryRun)
	if err != nil {
		return err
	}
	var missing []string
	for _, id := range res.NotFound {
		missing = append(missing, strconv.FormatInt(id, 10))
	}
	if sel.Key != "" && len(res.Changed) == 0 {
		// A key names one intent: say what became of it.
		in, _, err := relay.Inspect(ctx, pool, 0, sel.Key)
		switch {
		case errors.Is(err, relay.ErrNotFound):
			missing = append(missing, fmt.Sprintf("with key %q", sel.Key))
		case err != nil:
			return err
		default:
			res.Skipped[in.ID] = in.State
		}
	}
	if err := reportAction(stdout, done, res, missing, *f.dryRun, *f.asJSON); err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: no intent %s", errNotFound, strings.Join(missing, ", "))
	}
	return nil
}

func reportAction(w io.Writer, done string, res relay.Action, missing []string, dryRun, asJSON bool) error {
	if asJSON {
		return writeJSON(w, struct {
			DryRun bool `json:"dry_run"`
			relay.Action
		}{dryRun, res})
	}
	verb := done
	if dryRun {
		verb = "would have " + done
	}
	fmt.Fprintf(w, "%s %d intent(s)%s\n", verb, len(res.Changed), idList(res.Changed))
	for _, id := range slices.Sorted(maps.Keys(res.Skipped)) {
		fmt.Fprintf(w, "intent %d is %s: left alone\n", id, res.Skipped[id])
	}
	for _, m := range missing {
		fmt.Fprintf(w, "intent %s not found\n", m)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
