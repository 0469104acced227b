package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/migrations"
)

const grantHelp = `Usage: outbox-relay grant producer|relay|auditor ROLE [--dry-run]

Grants the existing role ROLE what one party needs on schema outbox, and
nothing else:

  producer  insert intents (with or without a key); cannot read, change or
            delete intents, nor touch the relay's tables
  relay     what run, status and retry need with OUTBOX_MIGRATE=false; no DDL
  auditor   read the intents, attempts, relays and views; no writes

Run it as the owner of schema outbox (the role that migrates), after
outbox-relay migrate. It creates no role: create ROLE first (see
docs/operations.md). ROLE is taken as written, case included. Running it
again changes nothing; it revokes nothing.

Flags:
  --dry-run   print the statements instead of running them (no database
              needed)

Environment:
  DATABASE_URL   Postgres connection string, as the schema's owner (required)
`

func cmdGrant(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("grant", grantHelp, stderr)
	// The help lists the flag itself, with the arguments.
	fs.Usage = func() { fmt.Fprint(stderr, grantHelp) }
	dryRun := fs.Bool("dry-run", false, "print the statements instead of running them")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, "grant: give a party (producer, relay or auditor) and a ROLE\n\n", grantHelp)
		return errUsage
	}
	party, err := migrations.ParseParty(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "grant: %v\n", err)
		return errUsage
	}
	if len(pos) == 1 {
		fmt.Fprintf(stderr, "grant: give the ROLE to grant the %s privileges to\n", party)
		return errUsage
	}
	if len(pos) > 2 {
		fmt.Fprintf(stderr, "grant: unexpected argument %q after ROLE\n", pos[2])
		return errUsage
	}
	role := pos[1]
	stmts, err := migrations.GrantStatements(party, role)
	if err != nil {
		fmt.Fprintf(stderr, "grant: ROLE: %v\n", err)
		return errUsage
	}
	if *dryRun {
		fmt.Fprintln(stdout, "BEGIN;")
		for _, s := range stmts {
			fmt.Fprintf(stdout, "%s;\n", s)
		}
		fmt.Fprintln(stdout, "COMMIT;")
		return nil
	}

	var cfg dbConfig
	if err := loadConfig(ctx, env, &cfg); err != nil {
		return err
	}
	if err := checkDatabaseURL(cfg.DatabaseURL); err != nil {
		return err
	}
	res, err := migrations.Grant(ctx, cfg.DatabaseURL, party, role)
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "role %q holds the %s privileges on schema outbox (%d grants)\n", role, party, len(res.Statements))
	return nil
}

// parseInterspersed parses flags wherever they appear among the
// positional arguments (`grant relay app_relay --dry-run`), and returns
// the positional ones. After "--" everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
