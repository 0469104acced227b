package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// warnInterval is the longest a class of retryable failure stays out of
// the log while it keeps happening: its first failure is logged at once,
// later ones are counted and logged as one line per interval.
const warnInterval = time.Minute

// warnEvery rate-limits warnings by class: an API outage fails every
// attempt, and one line per attempt would bury everything else.
type warnEvery struct {
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	classes map[string]*warnClass
}

type warnClass struct {
	logged  time.Time // when the last line for the class was written
	pending int       // failures since then
	example string    // the latest failure's error
}

// warnLine is one line to log: count failures of class since the last one.
type warnLine struct {
	class   string
	count   int
	example string
}

func newWarnEvery(interval time.Duration, now func() time.Time) *warnEvery {
	return &warnEvery{interval: interval, now: now, classes: map[string]*warnClass{}}
}

// note records one failure of class, and returns the line to log now, if
// any: the first failure of a class, or the first after its interval has
// passed (with the count since the last line).
func (w *warnEvery) note(class, example string) (warnLine, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.classes[class]
	if c == nil {
		c = &warnClass{}
		w.classes[class] = c
	}
	c.pending++
	c.example = example
	now := w.now()
	if !c.logged.IsZero() && now.Sub(c.logged) < w.interval {
		return warnLine{}, false
	}
	return w.takeLocked(class, c, now), true
}

// due returns a line for every class with failures not yet logged whose
// interval has passed, so the count of a burst is logged even when no
// further failure comes; and forgets classes quiet for an interval.
func (w *warnEvery) due() []warnLine {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	var lines []warnLine
	for class, c := range w.classes {
		if now.Sub(c.logged) < w.interval {
			continue
		}
		if c.pending == 0 {
			delete(w.classes, class)
			continue
		}
		lines = append(lines, w.takeLocked(class, c, now))
	}
	return lines
}

func (w *warnEvery) takeLocked(class string, c *warnClass, now time.Time) warnLine {
	l := warnLine{class: class, count: c.pending, example: c.example}
	c.pending, c.logged = 0, now
	return l
}

// failureClass names a retryable failure for the log and the
// retryable_failures_total metric: the step and the answer (status, or
// how the call got none), never an id.
func failureClass(res *result) string {
	res.mu.Lock()
	defer res.mu.Unlock()
	for i := len(res.calls) - 1; i >= 0; i-- {
		c := res.calls[i]
		if c.outcome == callOK || c.outcome == callSkipped {
			continue
		}
		if c.status != 0 {
			return fmt.Sprintf("%s %d", c.step, c.status)
		}
		return fmt.Sprintf("%s %s", c.step, c.outcome)
	}
	return "relay"
}

// logRetryable records a retryable failure: counted in the metric, logged
// at warn at most once per class per warnInterval.
func (w *warnEvery) logRetryable(log *slog.Logger, m *metrics, res *result) {
	class := failureClass(res)
	m.warnings.WithLabelValues(class).Inc()
	if l, ok := w.note(class, firstLine(res.err)); ok {
		warnRetryable(log, l)
	}
}

func warnRetryable(log *slog.Logger, l warnLine) {
	log.Warn("retryable failures: intents back off and try again", "class", l.class,
		"failures", l.count, "per", warnInterval, "last_error", l.example)
}

// flush logs the counts of failures not logged yet.
func (w *warnEvery) flush(log *slog.Logger) {
	for _, l := range w.due() {
		warnRetryable(log, l)
	}
}

// logStateChange logs an intent's change of state at debug.
func (e *serviceEnv) logStateChange(id int64, attempt int, from, to State, why string) {
	if e.log.Enabled(context.Background(), slog.LevelDebug) {
		e.log.Debug("intent state", "intent_id", id, "attempt", attempt, "from", string(from), "to", string(to), "outcome", why)
	}
}
