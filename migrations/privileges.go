package migrations

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"
)

// Party is one kind of database user of the outbox. Grant gives a role
// exactly what its party needs on schema outbox, and nothing else.
type Party string

// The parties.
const (
	// Producer is an application that inserts intents (plain SQL or
	// outbox.Enqueue) and nothing more: it cannot read other intents, change
	// or delete them, or touch the relay's tables.
	Producer Party = "producer"
	// Relay is outbox-relay's run, status and retry, with the migrations
	// already applied by the owner (OUTBOX_MIGRATE=false): no DDL.
	Relay Party = "relay"
	// Auditor reads the intents, their attempts, the relays' bookkeeping
	// and the views, and writes nothing.
	Auditor Party = "auditor"
)

// Parties returns every party, in the order the CLI lists them.
func Parties() []Party { return []Party{Producer, Relay, Auditor} }

// ParseParty returns the party named s.
func ParseParty(s string) (Party, error) {
	for _, p := range Parties() {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown party %q: want producer, relay or auditor", s)
}

// none grants a party nothing on an object.
const none = ""

// objectAccess is what each party is granted on one object of schema
// outbox: the privilege list of a GRANT, or none. Every table, view,
// sequence and function of the schema has an entry deciding for every
// party (TestPrivilegesCoverSchema fails otherwise), so a migration that
// adds an object also says who may use it.
type objectAccess struct {
	// kind is the GRANT object type: SCHEMA, TABLE (tables and views),
	// SEQUENCE or FUNCTION.
	kind string
	// name is schema-qualified, as regclass or (for a function, with its
	// argument types) regprocedure prints it.
	name string
	// grants maps each party to its privileges (or none).
	grants map[Party]string
	// definer, for a function, is why it is SECURITY DEFINER; empty for
	// one that runs as its caller. Checked against the catalog by the tests.
	definer string
}

// access is the whole decision, in the order the statements run. Reasons:
//
//   - Producer: INSERT of the columns an application sets (payload, key,
//     run_after), so it cannot insert an intent that is already done or
//     leased. SELECT of id alone, because INSERT ... RETURNING id needs it
//     (outbox.Enqueue returns the new id); with it a producer can count
//     intents, but no column with content (payload, key, errors) is
//     readable. The insert trigger runs as the producer, so the producer
//     also holds what it uses: the id sequence and the validation
//     functions. The wake-up flag is the relay's: the after-insert trigger
//     is SECURITY DEFINER instead of granting it.
//   - Relay: the claim, renewal, sweep and completion update intents; the
//     retention deletes done intents and their attempts, retiring their
//     keys into outbox.retired_keys, and forgets old retired keys and
//     sync records; the completion records attempts and synced users and
//     conversations; heartbeats keep outbox.relays; an idle relay sets the
//     wake-up flag. retry and cancel update intents, purge deletes dead
//     ones with their attempts; pause and resume set outbox.control;
//     status reads intents, attempts, relays, the pause and the lag view.
//     No sequence: attempts' ids are an identity column, which needs no
//     privilege.
//   - Auditor: SELECT on everything that records what happened (intents,
//     attempts, synced users and conversations, relays, the views). It
//     can therefore run `outbox-relay status` and `inspect` too.
var access = []objectAccess{
	{kind: "SCHEMA", name: "outbox", grants: map[Party]string{
		Producer: "USAGE", Relay: "USAGE", Auditor: "USAGE"}},

	{kind: "TABLE", name: "outbox.intents", grants: map[Party]string{
		Producer: "INSERT (payload, key, run_after), SELECT (id)",
		Relay:    "SELECT, UPDATE, DELETE",
		Auditor:  "SELECT"}},
	{kind: "SEQUENCE", name: "outbox.intents_id_seq", grants: map[Party]string{
		// nextval in outbox.intents_before_insert.
		Producer: "USAGE", Relay: none, Auditor: none}},
	{kind: "TABLE", name: "outbox.attempts", grants: map[Party]string{
		Producer: none, Relay: "SELECT, INSERT, DELETE", Auditor: "SELECT"}},
	{kind: "SEQUENCE", name: "outbox.attempts_id_seq", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none}},
	{kind: "TABLE", name: "outbox.synced_users", grants: map[Party]string{
		Producer: none, Relay: "SELECT, INSERT, UPDATE, DELETE", Auditor: "SELECT"}},
	// The claim deletes the records of conversations it will PUT; the
	// completion upserts (ON CONFLICT DO UPDATE) and deletes them.
	{kind: "TABLE", name: "outbox.synced_conversations", grants: map[Party]string{
		Producer: none, Relay: "SELECT, INSERT, UPDATE, DELETE", Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.relays", grants: map[Party]string{
		Producer: none, Relay: "SELECT, INSERT, UPDATE, DELETE", Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.retired_keys", grants: map[Party]string{
		// Retention retires keys and forgets them past their horizon.
		Producer: none, Relay: "SELECT, INSERT, UPDATE, DELETE", Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.wakeup", grants: map[Party]string{
		Producer: none, Relay: "SELECT, UPDATE", Auditor: none}},
	// The claim and status read the operator's pause; pause and resume
	// change it (pause locks the table, which needs UPDATE).
	{kind: "TABLE", name: "outbox.control", grants: map[Party]string{
		Producer: none, Relay: "SELECT, UPDATE", Auditor: "SELECT"}},
	// Views (GRANT calls them tables). They read their tables with the
	// owner's rights, so SELECT on a view is all a reader needs.
	{kind: "TABLE", name: "outbox.intent_status", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.stuck_intents", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.dead_letters", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.calls_per_minute", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: "SELECT"}},
	// status reads the lag.
	{kind: "TABLE", name: "outbox.lag", grants: map[Party]string{
		Producer: none, Relay: "SELECT", Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.conversation_history", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: "SELECT"}},
	{kind: "TABLE", name: "outbox.user_history", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: "SELECT"}},

	// goose's bookkeeping: only the owner migrates.
	{kind: "TABLE", name: "outbox.goose_db_version", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none}},
	{kind: "SEQUENCE", name: "outbox.goose_db_version_id_seq", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none}},

	// Trigger functions need no EXECUTE to fire.
	{kind: "FUNCTION", name: "outbox.intents_before_insert()", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none}},
	{kind: "FUNCTION", name: "outbox.intents_after_insert()", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none},
		definer: "clears the relays' wake-up flag, which producers are not granted"},
	{kind: "FUNCTION", name: "outbox.intents_refuse_retired_key()", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none},
		definer: "reads retired keys and other intents' keys, which producers are not granted"},
	{kind: "FUNCTION", name: "outbox.intents_guard_payload()", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none}},
	{kind: "FUNCTION", name: "outbox.intents_before_update()", grants: map[Party]string{
		Producer: none, Relay: none, Auditor: none}},
	// Called by the insert trigger, as the producer.
	{kind: "FUNCTION", name: "outbox.validate_payload(jsonb)", grants: map[Party]string{
		Producer: "EXECUTE", Relay: none, Auditor: none}},
	{kind: "FUNCTION", name: "outbox.custom_violation(jsonb)", grants: map[Party]string{
		Producer: "EXECUTE", Relay: none, Auditor: none}},
	// Inlined into the insert trigger's condition, which needs EXECUTE
	// as well; it reads nothing but its argument.
	{kind: "FUNCTION", name: "outbox.payload_ok(jsonb)", grants: map[Party]string{
		Producer: "EXECUTE", Relay: none, Auditor: none}},
}

// GrantStatements returns the statements that grant role what party needs,
// in the order Grant runs them (in one transaction). role is a role name
// as it is stored (case matters); it is quoted here.
func GrantStatements(party Party, role string) ([]string, error) {
	if _, err := ParseParty(string(party)); err != nil {
		return nil, err
	}
	if err := checkRoleName(role); err != nil {
		return nil, err
	}
	grantee := pgx.Identifier{role}.Sanitize()
	var stmts []string
	for _, o := range access {
		privs := o.grants[party]
		if privs == none {
			continue
		}
		stmts = append(stmts, fmt.Sprintf("GRANT %s ON %s %s TO %s", privs, o.kind, o.name, grantee))
	}
	return stmts, nil
}

// maxRoleName is the longest role name Postgres keeps (NAMEDATALEN - 1);
// a longer one is silently cut, and could name another role.
const maxRoleName = 63

func checkRoleName(role string) error {
	switch {
	case role == "":
		return errors.New("role name must not be empty")
	case len(role) > maxRoleName:
		return fmt.Errorf("role name %q is %d bytes, more than the %d Postgres keeps", role, len(role), maxRoleName)
	case role == "public" || role == "none":
		// GRANT reads "public" (quoted or not) as every role, and
		// refuses "none".
		return fmt.Errorf("role name %q is reserved: give a role of its own", role)
	case strings.ContainsRune(role, 0):
		return errors.New("role name must not contain a NUL byte")
	}
	return nil
}

// GrantResult reports what Grant did.
type GrantResult struct {
	// Statements are the GRANTs run, in order.
	Statements []string
	// Warnings say why the grants may not limit the role: it is a
	// superuser, or a member of the schema's owner.
	Warnings []string
}

// ErrRoleNotFound matches the error Grant returns when the role to grant
// to does not exist. Roles are global to the cluster and are created by
// the operator, never by this package.
var ErrRoleNotFound = errors.New("role does not exist")

// codePrivilegeNotGranted is the SQLSTATE of the warning GRANT gives,
// instead of an error, when the grantor holds a privilege without the
// right to pass it on.
const codePrivilegeNotGranted = "01007"

// Grant gives role what party needs on schema outbox of the database at
// connString, in one transaction, and returns the statements it ran. It
// runs as the schema's owner (or a superuser) after the migrations, and
// refuses a schema at another version than this package's latest: the
// decision covers exactly the objects of that version. Granting again
// changes nothing. Grant only adds privileges: it revokes none, so a role
// may be given the privileges of two parties.
func Grant(ctx context.Context, connString string, party Party, role string) (GrantResult, error) {
	stmts, err := GrantStatements(party, role)
	if err != nil {
		return GrantResult{}, err
	}
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return GrantResult{}, fmt.Errorf("parse database url: %w", err)
	}
	// GRANT reports privileges it could not pass on as a warning, not an
	// error; collect them to fail on.
	var mu sync.Mutex
	var refused []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if n.Code == codePrivilegeNotGranted {
			mu.Lock()
			refused = append(refused, n.Message)
			mu.Unlock()
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return GrantResult{}, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	res := GrantResult{Statements: stmts}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// Not while a migration runs (it holds the same lock), and one
		// grant at a time: concurrent GRANTs on one object can fail with
		// "tuple concurrently updated".
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(lockID)); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if err := checkOwner(ctx, tx); err != nil {
			return err
		}
		if err := checkSchemaVersion(ctx, tx); err != nil {
			return err
		}
		warnings, err := checkRole(ctx, tx, role)
		if err != nil {
			return err
		}
		res.Warnings = warnings
		for _, stmt := range stmts {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", stmt, err)
			}
			mu.Lock()
			msgs := refused
			mu.Unlock()
			if len(msgs) > 0 {
				return fmt.Errorf("%s: %s: run grant as the owner of schema outbox", stmt, strings.Join(msgs, "; "))
			}
		}
		return nil
	})
	if err != nil {
		return GrantResult{}, err
	}
	return res, nil
}

// checkSchemaVersion fails unless the schema is at the latest embedded
// version.
func checkSchemaVersion(ctx context.Context, tx pgx.Tx) error {
	latest, err := latestVersion()
	if err != nil {
		return err
	}
	var migrated bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('outbox.goose_db_version') IS NOT NULL`).Scan(&migrated); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if !migrated {
		return errNotMigrated
	}
	var current int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+VersionTable).Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case current < latest:
		return fmt.Errorf("schema outbox is at version %d, this outbox-relay's migrations reach %d: run outbox-relay migrate first", current, latest)
	case current > latest:
		return fmt.Errorf("schema outbox is at version %d, newer than this outbox-relay knows (%d): grant with the outbox-relay that migrated it", current, latest)
	}
	return nil
}

// latestVersion is the highest version among the embedded migrations.
func latestVersion() (int64, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return 0, err
	}
	var latest int64
	for _, e := range entries {
		v, err := goose.NumericComponent(e.Name())
		if err != nil {
			return 0, fmt.Errorf("migration %s: %w", e.Name(), err)
		}
		latest = max(latest, v)
	}
	return latest, nil
}

// checkOwner fails unless schema outbox exists and the connected role
// may grant on it (it owns the schema, has its owner's rights, or is a
// superuser).
func checkOwner(ctx context.Context, tx pgx.Tx) error {
	var owner, me string
	var canGrant bool
	err := tx.QueryRow(ctx, `
SELECT n.nspowner::regrole::text, current_user, pg_has_role(n.nspowner, 'USAGE')
  FROM pg_namespace n
 WHERE n.nspname = 'outbox'`).Scan(&owner, &me, &canGrant)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotMigrated
	}
	if err != nil {
		return fmt.Errorf("read schema owner: %w", err)
	}
	if !canGrant {
		return fmt.Errorf("connected as %s, which does not own schema outbox (%s does): run grant as its owner", me, owner)
	}
	return nil
}

var errNotMigrated = errors.New("schema outbox is not migrated: run outbox-relay migrate first")

// checkRole fails when role does not exist, and warns when the grants
// cannot limit it.
func checkRole(ctx context.Context, tx pgx.Tx, role string) ([]string, error) {
	var super, member bool
	var owner string
	err := tx.QueryRow(ctx, `
SELECT r.rolsuper, pg_has_role(r.oid, n.nspowner, 'USAGE'), n.nspowner::regrole::text
  FROM pg_roles r, pg_namespace n
 WHERE r.rolname = $1
   AND n.nspname = 'outbox'`, role).Scan(&super, &member, &owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q (create it first, e.g. CREATE ROLE %s LOGIN PASSWORD '…'; see docs/operations.md)",
			ErrRoleNotFound, role, pgx.Identifier{role}.Sanitize())
	}
	if err != nil {
		return nil, fmt.Errorf("read role %q: %w", role, err)
	}
	var warnings []string
	switch {
	case super:
		warnings = append(warnings, fmt.Sprintf("role %q is a superuser: privileges do not limit it", role))
	case member:
		warnings = append(warnings, fmt.Sprintf("role %q has the privileges of %s, the owner of schema outbox: these grants do not limit it", role, owner))
	}
	return warnings, nil
}
