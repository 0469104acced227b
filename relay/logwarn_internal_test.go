package relay

import (
	"testing"
	"time"
)

// A class failing without pause is logged once at its first failure, then
// once per interval with the count since; classes are independent, and a
// burst's count is logged by due() even when no further failure comes.
func TestWarnEveryLimitsLinesPerClass(t *testing.T) {
	now := time.Unix(1000, 0)
	w := newWarnEvery(time.Minute, func() time.Time { return now })

	lines := 0
	for i := range 500 {
		if l, ok := w.note("user 500", "boom"); ok {
			lines++
			if l.count != 1 || l.class != "user 500" {
				t.Fatalf("first line = %+v, want one failure of user 500", l)
			}
		}
		now = now.Add(10 * time.Millisecond) // 500 failures in 5s
		if i == 0 {
			if got := w.due(); len(got) != 0 {
				t.Fatalf("due right after the first line = %+v, want nothing", got)
			}
		}
	}
	if lines != 1 {
		t.Fatalf("%d lines for 500 failures within the interval, want 1", lines)
	}
	if l, ok := w.note("conversation timeout", "slow"); !ok || l.count != 1 {
		t.Fatalf("another class's first failure = %+v, %v; want logged at once", l, ok)
	}
	if got := w.due(); len(got) != 0 {
		t.Fatalf("due before the interval passed = %+v", got)
	}

	now = now.Add(time.Minute)
	got := w.due()
	if len(got) != 1 || got[0].class != "user 500" || got[0].count != 499 || got[0].example != "boom" {
		t.Fatalf("due after the interval = %+v, want one line counting the other 499 user 500 failures", got)
	}
	if l, ok := w.note("user 500", "boom again"); ok {
		t.Fatalf("a failure right after the summary was logged at once: %+v", l)
	}
	now = now.Add(time.Minute + time.Second)
	if l, ok := w.note("user 500", "later"); !ok || l.count != 2 {
		t.Fatalf("a failure after the interval = %+v, %v; want a line counting 2", l, ok)
	}
	// Quiet classes are forgotten: the next failure is logged at once.
	now = now.Add(2 * time.Minute)
	w.due()
	w.due()
	if len(w.classes) != 0 {
		t.Fatalf("classes kept after a quiet interval: %v", w.classes)
	}
}
