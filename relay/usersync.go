package relay

import (
	"sync"
	"time"
)

// maxRecentUsers bounds the relay's memory of recent user syncs; past it
// the memory starts over (the database's synced_users still applies).
const maxRecentUsers = 100_000

// userSyncs lets deliveries in one relay share user PUTs: a user whose
// identical content this relay PUT within the TTL is skipped even before
// that result reaches outbox.synced_users, and a PUT of the same content
// already under way is waited for rather than repeated.
type userSyncs struct {
	ttl time.Duration

	mu       sync.Mutex
	recent   map[string]recentSync // user id -> last successful PUT
	inflight map[string]*userFlight
}

type recentSync struct {
	hash string
	at   time.Time
}

type userFlight struct {
	done chan struct{}
	ok   bool
}

func newUserSyncs(ttl time.Duration) *userSyncs {
	return &userSyncs{ttl: ttl, recent: map[string]recentSync{}, inflight: map[string]*userFlight{}}
}

// synced reports whether this relay PUT exactly this content within the TTL.
func (s *userSyncs) synced(id string, hash []byte) bool {
	if s.ttl <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recent[id]
	return ok && r.hash == string(hash) && time.Since(r.at) < s.ttl
}

// begin returns the flight already under way for this content (the caller
// waits on it), or registers the caller as the one making the PUT (leader
// true; it must call end).
func (s *userSyncs) begin(id string, hash []byte) (f *userFlight, leader bool) {
	key := id + "\x00" + string(hash)
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.inflight[key]; ok {
		return f, false
	}
	// A flight that ended between the caller's synced check and now.
	if r, ok := s.recent[id]; ok && r.hash == string(hash) && time.Since(r.at) < s.ttl {
		f := &userFlight{done: make(chan struct{}), ok: true}
		close(f.done)
		return f, false
	}
	f = &userFlight{done: make(chan struct{})}
	s.inflight[key] = f
	return f, true
}

// end finishes the leader's flight with its outcome.
func (s *userSyncs) end(id string, hash []byte, f *userFlight, ok bool) {
	key := id + "\x00" + string(hash)
	s.mu.Lock()
	delete(s.inflight, key)
	if ok && s.ttl > 0 {
		if len(s.recent) >= maxRecentUsers {
			s.recent = map[string]recentSync{}
		}
		s.recent[id] = recentSync{hash: string(hash), at: time.Now()}
	}
	s.mu.Unlock()
	f.ok = ok
	close(f.done)
}

// forget drops users from the relay's memory: TalkJS may not have them.
func (s *userSyncs) forget(ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.recent, id)
	}
}
