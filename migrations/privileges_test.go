package migrations_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
)

// Every table, view, sequence and function of schema outbox has a decision
// for every party in privileges.go, and every decision names an object
// that exists: a migration that adds an object must say who may use it.
// Every function has a fixed search_path (or a SQL-standard body, whose
// names are bound when it is created), is not executable by PUBLIC, and is
// SECURITY DEFINER exactly when its decision gives the reason.
func TestPrivilegesCoverSchema(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()

	decided := map[string]migrations.Decision{}
	for _, d := range migrations.Decisions() {
		decided[d.Kind+" "+d.Name] = d
		for _, p := range migrations.Parties() {
			if _, ok := d.Grants[p]; !ok {
				t.Errorf("%s %s: no decision for the %s (write none to grant nothing)", d.Kind, d.Name, p)
			}
		}
		if len(d.Grants) != len(migrations.Parties()) {
			t.Errorf("%s %s: decides for %d parties, want %d", d.Kind, d.Name, len(d.Grants), len(migrations.Parties()))
		}
	}

	// Names as regclass and regprocedure print them with only pg_catalog
	// on the search_path: schema-qualified, as the decisions write them.
	const objects = `
SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
       c.oid::regclass::text, NULL::boolean, NULL::boolean, NULL::boolean
  FROM pg_class c
 WHERE c.relnamespace = 'outbox'::regnamespace
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
 UNION ALL
SELECT 'SCHEMA', 'outbox', NULL, NULL, NULL
 UNION ALL
SELECT 'FUNCTION', p.oid::regprocedure::text,
       p.prosecdef,
       p.prosqlbody IS NOT NULL OR coalesce('search_path=pg_catalog, outbox, pg_temp' = ANY (p.proconfig), false),
       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a WHERE a.grantee = 0)
  FROM pg_proc p
 WHERE p.pronamespace = 'outbox'::regnamespace`
	type object struct {
		kind, name                     string
		definer, fixedPath, publicExec *bool
	}
	var found []object
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL search_path = pg_catalog`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, objects)
		if err != nil {
			return err
		}
		found, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (object, error) {
			var o object
			err := row.Scan(&o.kind, &o.name, &o.definer, &o.fixedPath, &o.publicExec)
			return o, err
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	seen := map[string]bool{}
	for _, o := range found {
		key := o.kind + " " + o.name
		seen[key] = true
		d, ok := decided[key]
		if !ok {
			t.Errorf("%s has no entry in access (migrations/privileges.go): decide what the producer, relay and auditor may do with it", key)
			continue
		}
		if o.kind != "FUNCTION" {
			continue
		}
		if !*o.fixedPath {
			t.Errorf("%s: neither SET search_path = pg_catalog, outbox, pg_temp nor a SQL-standard body", key)
		}
		if *o.publicExec {
			t.Errorf("%s: executable by PUBLIC: REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC in its migration", key, o.name)
		}
		if *o.definer != (d.Definer != "") {
			t.Errorf("%s: SECURITY DEFINER is %v, but its decision's reason for it is %q", key, *o.definer, d.Definer)
		}
	}
	for key := range decided {
		if !seen[key] {
			t.Errorf("access (migrations/privileges.go) decides for %s, which the schema does not have", key)
		}
	}
	if len(found) < 10 || !seen["TABLE outbox.intents"] || !seen["FUNCTION outbox.validate_payload(jsonb)"] {
		t.Errorf("found only %d objects in schema outbox: %v", len(found), found)
	}
}

func TestGrantStatements(t *testing.T) {
	t.Parallel()
	stmts, err := migrations.GrantStatements(migrations.Producer, `App "Producer"`)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(stmts, ";\n")
	for _, want := range []string{
		`GRANT USAGE ON SCHEMA outbox TO "App ""Producer"""`,
		`GRANT INSERT (payload, key, run_after), SELECT (id) ON TABLE outbox.intents TO "App ""Producer"""`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("producer statements lack %s:\n%s", want, all)
		}
	}
	if strings.Contains(all, "wakeup") || strings.Contains(all, "attempts") {
		t.Errorf("producer statements touch the relay's tables:\n%s", all)
	}
	for _, role := range []string{"", "public", "none", strings.Repeat("r", 64)} {
		if _, err := migrations.GrantStatements(migrations.Relay, role); err == nil {
			t.Errorf("role %q accepted", role)
		}
	}
	if _, err := migrations.GrantStatements("owner", "r"); err == nil {
		t.Error("party owner accepted")
	}
}
