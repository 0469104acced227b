// Package sqlexample runs examples/sql/order.sql, the plain-SQL way to queue an
// intent, with psql.
package sqlexample

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The script commits an order with its intent, is refused a second intent
// with the same key, and shows the intent pending; run twice, it places a
// second order with a key of its own.
func TestOrderScript(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatal("psql is needed to run examples/sql (apt-get install postgresql-client)")
	}
	dbURL := pgtest.NewDatabase(t)
	for run := 1; run <= 2; run++ {
		out, err := exec.CommandContext(t.Context(), "psql", dbURL, "-X", "-v", "ON_ERROR_STOP=1", "-f", "order.sql").CombinedOutput()
		if err != nil {
			t.Fatalf("run %d: psql: %v\n%s", run, err, out)
		}
		text := string(out)
		for _, want := range []string{
			`ERROR:  duplicate key value violates unique constraint "intents_key_key"`,
			fmt.Sprintf("| order-%d | pending |        0 |", run),
		} {
			if !strings.Contains(text, want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, text)
			}
		}
	}
	pool := pgtest.Pool(t, dbURL)
	var orders, intents, matched int
	err := pool.QueryRow(t.Context(), `
SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox.intents),
       (SELECT count(*) FROM orders o JOIN outbox.intents i
            ON i.key = 'order-' || o.id AND i.payload->'conversation'->>'id' = 'order_' || o.id)`).Scan(&orders, &intents, &matched)
	if err != nil {
		t.Fatal(err)
	}
	if orders != 2 || intents != 2 || matched != 2 {
		t.Fatalf("orders %d, intents %d, matched %d: want 2 orders, each with its one intent", orders, intents, matched)
	}
}
