package pgcluster_test

import (
	"os"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgcluster"
)

// A throwaway cluster starts, serves, stops, restarts and is removed.
func TestClusterLifecycle(t *testing.T) {
	t.Parallel()
	if _, err := pgcluster.Binaries(); err != nil {
		t.Skipf("no Postgres server binaries: %v", err)
	}
	ctx := t.Context()
	c, err := pgcluster.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("remove cluster: %v", err)
		}
	})
	url := c.URL("postgres")
	if err := pgcluster.Ping(ctx, url, 5*time.Second); err != nil {
		t.Fatalf("ping after start: %v", err)
	}
	if err := c.StopServer(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := pgcluster.Ping(ctx, url, time.Second); err == nil {
		t.Fatal("server still answers after stop")
	}
	if err := c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgcluster.Ping(ctx, url, 5*time.Second); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory still there after Remove")
	}
}
