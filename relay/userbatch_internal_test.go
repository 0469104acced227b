package relay

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// planCase names intents by id: each carries users "id:name" (a name
// stands for the content), and skips those listed.
type planCase struct {
	name    string
	intents []planIntent
	want    []string           // users PUT: "user<-from:[served intents]", in order
	covered map[int64][]string // intent -> users covered by a later intent's skip
}

func pi(id int64, skip []string, users ...string) planIntent {
	p := planIntent{id: id, hashes: map[string][]byte{}, skip: map[string]bool{}}
	for _, u := range users {
		uid, name, _ := strings.Cut(u, ":")
		p.users = append(p.users, outbox.User{ID: uid, Name: name})
		p.hashes[uid] = []byte(name)
	}
	for _, s := range skip {
		p.skip[s] = true
	}
	return p
}

func TestUnitPlanUsers(t *testing.T) {
	t.Parallel()
	for _, tt := range []planCase{
		{name: "distinct users, in the order of their first intent",
			intents: []planIntent{pi(2, nil, "b:B", "a:A"), pi(1, nil, "z:Z")},
			want:    []string{"z:Z<-1:[1]", "a:A<-2:[2]", "b:B<-2:[2]"}},
		{name: "a shared user carries the highest id's content, for every intent",
			intents: []planIntent{pi(3, nil, "s:S3"), pi(1, nil, "s:S1", "x:X"), pi(2, nil, "s:S2")},
			want:    []string{"s:S3<-3:[1 2 3]", "x:X<-1:[1]"}},
		{name: "a user an intent skips is not PUT for it",
			intents: []planIntent{pi(1, []string{"s"}, "s:S"), pi(2, nil, "s:S2")},
			want:    []string{"s:S2<-2:[2]"}},
		{name: "the highest intent skips: PUT for no one, covered for the others",
			intents: []planIntent{pi(1, nil, "s:Old", "a:A"), pi(2, []string{"s"}, "s:New")},
			want:    []string{"a:A<-1:[1]"},
			covered: map[int64][]string{1: {"s"}}},
		{name: "every intent skips", intents: []planIntent{pi(1, []string{"s"}, "s:S"), pi(2, []string{"s"}, "s:S")}},
		{name: "no users", intents: []planIntent{pi(1, nil)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			jobs := map[int64]*claimedIntent{}
			for _, in := range tt.intents {
				jobs[in.id] = &claimedIntent{id: in.id}
			}
			p := planUsers(tt.intents, jobs)
			var got []string
			for _, bu := range p.put {
				var served []int64
				for _, j := range bu.jobs {
					served = append(served, j.id)
				}
				got = append(got, fmt.Sprintf("%s:%s<-%d:%v", bu.user.ID, bu.user.Name, bu.from, served))
				if string(bu.hash) != bu.user.Name {
					t.Errorf("user %s: hash of %q, content %q: want the content sent's", bu.user.ID, bu.hash, bu.user.Name)
				}
				for _, id := range served {
					if !slices.Contains(p.byIntent[id], bu) {
						t.Errorf("intent %d does not wait for %s", id, bu.user.ID)
					}
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("put = %q, want %q", got, tt.want)
			}
			if fmt.Sprint(p.covered) != fmt.Sprint(orEmpty(tt.covered)) {
				t.Errorf("covered = %v, want %v", p.covered, tt.covered)
			}
		})
	}
}

func orEmpty(m map[int64][]string) map[int64][]string {
	if m == nil {
		return map[int64][]string{}
	}
	return m
}

func TestUnitPlanUsersWithoutHashes(t *testing.T) {
	t.Parallel()
	in := planIntent{id: 1, users: []outbox.User{{ID: "a", Name: "A"}}} // user syncs off: no hashes, no skips
	p := planUsers([]planIntent{in}, map[int64]*claimedIntent{1: {id: 1}})
	if len(p.put) != 1 || p.put[0].hash != nil {
		t.Fatalf("put = %v, want user a with no hash", p.put)
	}
}

func TestUnitChunks(t *testing.T) {
	t.Parallel()
	seq := func(n int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = i
		}
		return s
	}
	for _, tt := range []struct {
		n, size int
		want    []int
	}{
		{0, 100, nil}, {1, 100, []int{1}}, {100, 100, []int{100}}, {101, 100, []int{100, 1}},
		{250, 100, []int{100, 100, 50}}, {5, 2, []int{2, 2, 1}},
	} {
		var sizes []int
		var all []int
		for _, c := range chunks(seq(tt.n), tt.size) {
			sizes = append(sizes, len(c))
			all = append(all, c...)
		}
		if !slices.Equal(sizes, tt.want) || !slices.Equal(all, seq(tt.n)) {
			t.Errorf("chunks(%d, %d) sizes %v, want %v, in order", tt.n, tt.size, sizes, tt.want)
		}
	}
}

func TestUnitSplitRefused(t *testing.T) {
	t.Parallel()
	// Users a (intents 1, 2), b (2), c (3).
	j1, j2, j3 := &claimedIntent{id: 1}, &claimedIntent{id: 2}, &claimedIntent{id: 3}
	mk := func(id string, jobs ...*claimedIntent) *batchUser {
		bu := &batchUser{jobs: jobs}
		bu.user.ID = id
		return bu
	}
	sent := []*batchUser{mk("a", j1, j2), mk("b", j2), mk("c", j3)}
	for _, tt := range []struct {
		name         string
		ids, reasons []string
		bad, why     []string
		rest         []string
		deadIntents  []int64
	}{
		{name: "one named", ids: []string{"b"}, reasons: []string{"no name"},
			bad: []string{"b"}, why: []string{"no name"}, rest: []string{"a", "c"}, deadIntents: []int64{2}},
		{name: "shared user named: all its intents", ids: []string{"a"}, reasons: []string{"bad email"},
			bad: []string{"a"}, why: []string{"bad email"}, rest: []string{"b", "c"}, deadIntents: []int64{1, 2}},
		{name: "unknown names ignored", ids: []string{"zz", "c"}, reasons: []string{"?", "x"},
			bad: []string{"c"}, why: []string{"x"}, rest: []string{"a", "b"}, deadIntents: []int64{3}},
		{name: "none named", rest: []string{"a", "b", "c"}},
		{name: "reasons missing", ids: []string{"a"}, bad: []string{"a"}, why: []string{""}, rest: []string{"b", "c"}, deadIntents: []int64{1, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad, why, rest := splitRefused(sent, tt.ids, tt.reasons)
			ids := func(us []*batchUser) []string {
				var out []string
				for _, u := range us {
					out = append(out, u.user.ID)
				}
				return out
			}
			var dead []int64
			for _, j := range jobsOf(bad) {
				dead = append(dead, j.id)
			}
			slices.Sort(dead)
			if !slices.Equal(ids(bad), tt.bad) || !slices.Equal(why, tt.why) || !slices.Equal(ids(rest), tt.rest) || !slices.Equal(dead, tt.deadIntents) {
				t.Errorf("bad %v %q, rest %v, intents %v; want %v %q, %v, %v", ids(bad), why, ids(rest), dead, tt.bad, tt.why, tt.rest, tt.deadIntents)
			}
		})
	}
}

func TestUnitNewCallID(t *testing.T) {
	t.Parallel()
	a, b := newCallID(), newCallID()
	if a == b || len(a) != 36 || a[14] != '4' {
		t.Errorf("call ids %q, %q: want distinct version 4 UUIDs", a, b)
	}
}
