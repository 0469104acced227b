package relay

import (
	"context"
	"sync"
)

// userFlights lets the deliveries of one relay share a user PUT under way:
// a delivery about to PUT the same content as one already in flight waits
// for that answer instead of repeating the call.
//
// It remembers nothing once a PUT has ended. Whether TalkJS holds a user's
// content is for outbox.synced_users to say, read when the intent is
// claimed: another relay may have PUT other content since this one's last
// PUT, and only the database knows.
type userFlights struct {
	mu       sync.Mutex
	inflight map[string]*userFlight // user id + content hash -> the PUT under way
}

// userFlight is one user PUT under way. ok is written before done is
// closed and read only after.
type userFlight struct {
	done chan struct{}
	ok   bool
}

func newUserFlights() *userFlights {
	return &userFlights{inflight: map[string]*userFlight{}}
}

// begin returns the flight already under way for this content (the caller
// waits on it), or registers the caller as the one making the PUT (leader
// true; it must call end).
func (s *userFlights) begin(id string, hash []byte) (f *userFlight, leader bool) {
	key := id + "\x00" + string(hash)
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.inflight[key]; ok {
		return f, false
	}
	f = &userFlight{done: make(chan struct{})}
	s.inflight[key] = f
	return f, true
}

// end finishes the leader's flight with its outcome.
func (s *userFlights) end(id string, hash []byte, f *userFlight, ok bool) {
	key := id + "\x00" + string(hash)
	s.mu.Lock()
	delete(s.inflight, key)
	s.mu.Unlock()
	f.ok = ok
	close(f.done)
}

// wait returns the flight's outcome once it ends, or ctx's error if ctx
// ends first; the outcome is then not read, as the leader may still be
// writing it.
func (f *userFlight) wait(ctx context.Context) (ok bool, err error) {
	select {
	case <-f.done:
		return f.ok, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}
