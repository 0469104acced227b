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
