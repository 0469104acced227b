package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// pause and resume as a script drives them: status --json shows the pause
// and clears it; pausing twice keeps the first pause; exit codes hold.
func TestPauseResumeCLI(t *testing.T) {
	t.Parallel()
	f := newOperateFixture(t)
	type pauseDoc struct {
		Since  time.Time `json:"since"`
		By     string    `json:"by"`
		Reason string    `json:"reason"`
	}
	status := func() *pauseDoc {
		var doc struct {
			Paused *pauseDoc `json:"paused"`
		}
		out := f.cli(t, 0, "status", "--json")
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(out, `"paused": `) {
			t.Fatalf("status --json has no paused key:\n%s", out)
		}
		return doc.Paused
	}
	if p := status(); p != nil {
		t.Fatalf("paused = %+v before any pause", p)
	}
	if out := f.cli(t, 0, "status"); !strings.Contains(out, "delivery not paused") {
		t.Errorf("status text lacks the pause state:\n%s", out)
	}

	var first struct {
		Paused  pauseDoc `json:"paused"`
		Started bool     `json:"started"`
	}
	out := f.cli(t, 0, "pause", "--reason", "database upgrade", "--json")
	if err := json.Unmarshal([]byte(out), &first); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !first.Started || first.Paused.Reason != "database upgrade" || first.Paused.By != "postgres" {
		t.Errorf("pause --json = %+v", first)
	}
	if p := status(); p == nil || !p.Since.Equal(first.Paused.Since) || p.Reason != "database upgrade" {
		t.Errorf("status paused = %+v, want %+v", p, first.Paused)
	}
	if out := f.cli(t, 0, "status"); !strings.Contains(out, "delivery paused since") || !strings.Contains(out, "database upgrade") {
		t.Errorf("status text lacks the pause:\n%s", out)
	}
	if out := f.cli(t, 0, "pause", "--reason", "other"); !strings.Contains(out, "already paused") || !strings.Contains(out, "database upgrade") {
		t.Errorf("a second pause says:\n%s", out)
	}
	if p := status(); p == nil || p.Reason != "database upgrade" {
		t.Errorf("a second pause changed the first: %+v", p)
	}

	if out := f.cli(t, 0, "resume"); !strings.Contains(out, "delivery resumed") {
		t.Errorf("resume says:\n%s", out)
	}
	if p := status(); p != nil {
		t.Errorf("paused = %+v after resume", p)
	}
	if out := f.cli(t, 0, "resume", "--json"); strings.TrimSpace(out) != "{\n  \"resumed\": false\n}" {
		t.Errorf("resume --json when not paused = %s", out)
	}
	f.cli(t, 2, "pause", "why")
	f.cli(t, 2, "resume", "now")
	f.cli(t, 0, "pause", "--help")
}

// Above relay.ExactDoneLimit rows status does not count the done history
// (a scan of the whole table): done is the planner's estimate less the
// exact counts of the other states, and says so.
func TestStatusEstimatesDoneOnLargeTables(t *testing.T) {
	t.Parallel()
	f := newOperateFixture(t)
	// What autovacuum would record for a table of half a million rows.
	if _, err := f.pool.Exec(t.Context(),
		`UPDATE pg_class SET reltuples = 500000 WHERE oid = 'outbox.intents'::regclass`); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Counts        map[string]int64 `json:"counts"`
		DoneEstimated bool             `json:"done_estimated"`
	}
	out := f.cli(t, 0, "status", "--json")
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := map[string]int64{"pending": 2, "delivering": 1, "dead": 3, "done": 500000 - 6}
	for state, n := range want {
		if doc.Counts[state] != n {
			t.Errorf("counts[%s] = %d, want %d", state, doc.Counts[state], n)
		}
	}
	if !doc.DoneEstimated {
		t.Error("done_estimated = false for an estimated done count")
	}
	if out := f.cli(t, 0, "status"); !strings.Contains(out, "~499994 (estimate)") {
		t.Errorf("status text does not mark the estimate:\n%s", out)
	}
}
