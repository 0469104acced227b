package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/relay"
)

const pauseHelp = `Usage: outbox-relay pause [--reason R] [--json]

Stops every relay from claiming intents: when the command returns, no
relay claims another intent until "outbox-relay resume". Deliveries under
way finish. Relays stay up, report the pause in /readyz (503) and in the
outbox_relay_paused{reason="operator"} metric, and "outbox-relay status"
shows it. Pausing while paused changes nothing.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdPause(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("pause", pauseHelp, stderr)
	reason := fs.String("reason", "", "why, shown by status and /readyz")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pause: unexpected argument %q (a reason goes in --reason)\n", fs.Arg(0))
		return errUsage
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	p, started, err := relay.Pause(ctx, pool, *reason)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, struct {
			Paused  *relay.OperatorPause `json:"paused"`
			Started bool                 `json:"started"`
		}{p, started})
	}
	if !started {
		fmt.Fprintf(stdout, "already %s\n", describePause(p))
		return nil
	}
	fmt.Fprintf(stdout, "%s\nno relay claims an intent until \"outbox-relay resume\"\n", describePause(p))
	return nil
}

const resumeHelp = `Usage: outbox-relay resume [--json]

Ends an operator's pause: relays claim again at once. Resuming when not
paused changes nothing.

Environment:
  DATABASE_URL   Postgres connection string (required)
` + exitCodesHelp

func cmdResume(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("resume", resumeHelp, stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "resume: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	resumed, err := relay.Resume(ctx, pool)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, struct {
			Resumed bool `json:"resumed"`
		}{resumed})
	}
	if resumed {
		fmt.Fprintln(stdout, "delivery resumed")
	} else {
		fmt.Fprintln(stdout, "delivery was not paused")
	}
	return nil
}

// describePause says who paused delivery, when and why.
func describePause(p *relay.OperatorPause) string {
	s := fmt.Sprintf("paused since %s (%s ago) by %s", p.Since.Format(time.RFC3339),
		time.Since(p.Since).Round(time.Second), p.By)
	if p.Reason != "" {
		s += ": " + p.Reason
	}
	return s
}
