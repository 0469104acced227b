package relay

import (
	"testing"
	"time"
)

func TestControlReaderService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	startService(t, r.control)
	if err := r.control.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	if _, _, err := Pause(t.Context(), pool, "maintenance"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the pause read", func() bool {
		p := r.control.operator.get()
		return p != nil && p.Reason == "maintenance"
	})
	if _, err := Resume(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the resume read", func() bool { return r.control.operator.get() == nil })
	stopService(t, r.control)
}
