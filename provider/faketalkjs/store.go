package faketalkjs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

// maxBodyBytes bounds a request body; TalkJS bodies of the relay's calls
// are a few kilobytes.
const maxBodyBytes = 1 << 20

// Message list paging, as in TalkJS.
const (
	defaultListLimit = 10
	maxListLimit     = 100
)

// User is a stored user. The JSON form is what GET returns.
type User struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Email          []string          `json:"email"`
	PhotoURL       string            `json:"photoUrl,omitempty"`
	WelcomeMessage string            `json:"welcomeMessage,omitempty"`
	Role           string            `json:"role,omitempty"`
	Custom         map[string]string `json:"custom"`
	// CreatedAt is when the user was first stored.
	CreatedAt time.Time `json:"-"`
}

func (u *User) clone() User {
	c := *u
	c.Email = slices.Clone(u.Email)
	c.Custom = maps.Clone(u.Custom)
	return c
}

// Conversation is a stored conversation.
type Conversation struct {
	ID string
	// Participants are user ids in the order they were first added.
	Participants []string
	Subject      string
	Custom       map[string]string
	// CreatedAt is when the conversation was first stored.
	CreatedAt time.Time
}

func (c *Conversation) clone() Conversation {
	d := *c
	d.Participants = slices.Clone(c.Participants)
	d.Custom = maps.Clone(c.Custom)
	return d
}

// StoredMessage is a stored message.
type StoredMessage struct {
	ID             string
	ConversationID string
	Text           string
	// Sender is the sender's user id, empty for a SystemMessage.
	Sender         string
	Type           string
	Custom         map[string]string
	IdempotencyKey string
	StoredAt       time.Time
}

func (m StoredMessage) clone() StoredMessage {
	m.Custom = maps.Clone(m.Custom)
	return m
}

// User returns the stored user with the given id.
func (s *Server) User(id string) (User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[id]
	if !ok {
		return User{}, false
	}
	return u.clone(), true
}

// Conversation returns the stored conversation with the given id.
func (s *Server) Conversation(id string) (Conversation, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.convs[id]
	if !ok {
		return Conversation{}, false
	}
	return c.clone(), true
}

// Messages returns the messages of a conversation, oldest first.
func (s *Server) Messages(conversationID string) []StoredMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.byConv[conversationID]
	out := make([]StoredMessage, len(idx))
	for i, j := range idx {
		out[i] = s.messages[j].clone()
	}
	return out
}

// AllMessages returns every stored message, oldest first.
func (s *Server) AllMessages() []StoredMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]StoredMessage, len(s.messages))
	for i, m := range s.messages {
		out[i] = m.clone()
	}
	return out
}

// UserCount returns the number of stored users.
func (s *Server) UserCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.users)
}

// ConversationCount returns the number of stored conversations.
func (s *Server) ConversationCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.convs)
}

// MessageCount returns the number of stored messages.
func (s *Server) MessageCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.messages)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats.clone()
	st.Users, st.Conversations, st.Messages = len(s.users), len(s.convs), len(s.messages)
	return st
}

// Reset zeroes the counters. Stored data is kept; see Clear.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = newStats()
}

// Clear drops every stored user, conversation and message (and the
// idempotency keys with them). Counters are kept; see Reset.
func (s *Server) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users = map[string]*User{}
	s.convs = map[string]*Conversation{}
	s.messages = nil
	s.byConv = map[string][]int{}
	s.keys = map[string]map[string]string{}
}

// DeleteConversation drops a stored conversation with its messages (and
// their idempotency keys), as a conversation deleted in TalkJS by other
// means than the relay: a later POST of messages to it gets 404.
func (s *Server) DeleteConversation(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.convs, id)
	delete(s.keys, id)
	kept := s.messages[:0]
	s.byConv = map[string][]int{}
	for _, m := range s.messages {
		if m.ConversationID == id {
			continue
		}
		s.byConv[m.ConversationID] = append(s.byConv[m.ConversationID], len(kept))
		kept = append(kept, m)
	}
	s.messages = kept
}

// errBodyTooLarge is returned by readBody for a body over maxBodyBytes.
var errBodyTooLarge = fmt.Errorf("body larger than %d bytes", maxBodyBytes)

// readBody reads the whole request body, up to maxBodyBytes.
func readBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("read body: %w", err)
	case len(body) > maxBodyBytes:
		return nil, errBodyTooLarge
	}
	return body, nil
}

// checkJSONBody refuses a PUT or POST whose Content-Type is not JSON or
// whose body could not be read.
func checkJSONBody(r *http.Request, body []byte, bodyErr error) (result, bool) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case err != nil || mt != "application/json":
		return reject(http.StatusUnsupportedMediaType, "Content-Type must be application/json"), true
	case errors.Is(bodyErr, errBodyTooLarge):
		return reject(http.StatusRequestEntityTooLarge, "%v", bodyErr), true
	case bodyErr != nil:
		return reject(http.StatusBadRequest, "%v", bodyErr), true
	}
	return result{}, false
}

// decodeStrict decodes exactly one JSON value into v, refusing fields v
// does not have: the relay must send only documented fields.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %w", err)
	}
	if dec.More() {
		return fmt.Errorf("invalid JSON body: data after the JSON value")
	}
	return nil
}

// mergeCustom applies a custom-field update as TalkJS does: the keys given
// are set, a null value removes its key, other keys are kept.
func mergeCustom(stored map[string]string, update map[string]*string) map[string]string {
	if stored == nil {
		stored = map[string]string{}
	}
	for k, v := range update {
		if v == nil {
			delete(stored, k)
		} else {
			stored[k] = *v
		}
	}
	return stored
}

// nullable is a body field that tells "left out" (keep the stored value)
// from null (clear it), as a TalkJS merge does.
type nullable[T any] struct {
	set  bool // present in the body, null or not
	null bool
	v    T
}

func (n *nullable[T]) UnmarshalJSON(data []byte) error {
	n.set = true
	if string(data) == "null" {
		n.null = true
		return nil
	}
	return json.Unmarshal(data, &n.v)
}

// apply merges n into *stored.
func (n nullable[T]) apply(stored *T) {
	switch {
	case n.null:
		var zero T
		*stored = zero
	case n.set:
		*stored = n.v
	}
}

type userBody struct {
	Name           *string            `json:"name"`
	Email          nullable[[]string] `json:"email"`
	PhotoURL       nullable[string]   `json:"photoUrl"`
	WelcomeMessage nullable[string]   `json:"welcomeMessage"`
	Role           nullable[string]   `json:"role"`
	Custom         map[string]*string `json:"custom"`
}

// rejectedUserReason is the message of a user refused by
// Faults.RejectUserIDs.
const rejectedUserReason = "injected fault: user rejected"

// decodeUser decodes and checks one user's body. email is optional, but a
// null email is refused: it would clear the user's email in TalkJS, which
// no relay means to do.
func decodeUser(body []byte) (userBody, error) {
	var b userBody
	if err := decodeStrict(body, &b); err != nil {
		return b, err
	}
	switch {
	case b.Name == nil || *b.Name == "":
		return b, errors.New("name is required")
	case b.Email.null:
		return b, errors.New("email is null, which would clear the user's email: send a non-empty array of strings or leave it out")
	case b.Email.set && len(b.Email.v) == 0:
		return b, errors.New("email must be a non-empty array of strings")
	}
	for i, e := range b.Email.v {
		if e == "" {
			return b, fmt.Errorf("email[%d] is empty", i)
		}
	}
	return b, nil
}

// putUser upserts a user as a merge: the fields given replace the stored
// ones, null clears a field, custom is merged key by key.
func (s *Server) putUser(id string, body []byte) result {
	b, err := decodeUser(body)
	if err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.faults.RejectUserIDs, id) {
		return result{
			status: http.StatusBadRequest,
			body:   errorBody(http.StatusBadRequest, rejectedUserReason),
			fault:  FaultRejectUser,
		}
	}
	s.applyUserLocked(id, b)
	res := ok(nil)
	res.users = []string{id}
	return res
}

// batchEntry is one user of a batch users PUT, in body order.
type batchEntry struct {
	id   string
	body json.RawMessage
}

// decodeUserBatch reads a batch users body: a JSON object keyed by user
// id. A key given twice is refused, as the caller's intent is unclear.
func decodeUserBatch(body []byte) ([]batchEntry, error) {
	const want = "body must be a JSON object keyed by user id"
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New(want)
	}
	var entries []batchEntry
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON body: %w", err)
		}
		id, _ := tok.(string) // object keys are always strings
		if seen[id] {
			return nil, fmt.Errorf("user id %q is given twice", id)
		}
		seen[id] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("invalid JSON body: %w", err)
		}
		entries = append(entries, batchEntry{id: id, body: raw})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, fmt.Errorf("invalid JSON body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON body: data after the JSON value")
	}
	return entries, nil
}

// putUsers upserts 1 to provider.MaxUsersPerPut users, each merged as
// putUser does, all or nothing: when any entry is invalid (or refused by
// Faults.RejectUserIDs) none is stored and the answer is a 400 whose body
// maps each invalid entry's id to its error message.
func (s *Server) putUsers(body []byte) result {
	entries, err := decodeUserBatch(body)
	if err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}
	if n := len(entries); n == 0 || n > provider.MaxUsersPerPut {
		return reject(http.StatusBadRequest, "body must hold 1 to %d users, got %d", provider.MaxUsersPerPut, n)
	}
	invalid := map[string]string{}
	bodies := make([]userBody, len(entries))
	for i, e := range entries {
		if e.id == "" {
			invalid[e.id] = "user id is empty"
			continue
		}
		b, err := decodeUser(e.body)
		if err != nil {
			invalid[e.id] = err.Error()
		}
		bodies[i] = b
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	injectedOnly := len(invalid) == 0
	for _, e := range entries {
		if _, bad := invalid[e.id]; !bad && slices.Contains(s.faults.RejectUserIDs, e.id) {
			invalid[e.id] = rejectedUserReason
		}
	}
	if len(invalid) > 0 {
		res := result{status: http.StatusBadRequest, body: invalid}
		if injectedOnly {
			res.fault = FaultRejectUser
		}
		return res
	}
	res := ok(nil)
	for i, e := range entries {
		s.applyUserLocked(e.id, bodies[i])
		res.users = append(res.users, e.id)
	}
	return res
}

// applyUserLocked merges a checked user body into the stored user,
// creating it. Caller holds mu.
func (s *Server) applyUserLocked(id string, b userBody) {
	u, found := s.users[id]
	if !found {
		u = &User{ID: id, CreatedAt: s.now()}
		s.users[id] = u
	}
	u.Name = *b.Name
	b.Email.v = slices.Clone(b.Email.v)
	b.Email.apply(&u.Email)
	b.PhotoURL.apply(&u.PhotoURL)
	b.WelcomeMessage.apply(&u.WelcomeMessage)
	b.Role.apply(&u.Role)
	u.Custom = mergeCustom(u.Custom, b.Custom)
}

type conversationBody struct {
	Participants *[]string          `json:"participants"`
	Subject      *string            `json:"subject"`
	Custom       map[string]*string `json:"custom"`
}

// putConversation upserts a conversation. As in TalkJS, participants given
// are added (existing participants are never removed by a PUT), the subject
// given replaces the stored one and custom is merged key by key.
func (s *Server) putConversation(id string, body []byte) result {
	var b conversationBody
	if err := decodeStrict(body, &b); err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}
	if b.Participants != nil {
		for i, p := range *b.Participants {
			if p == "" {
				return reject(http.StatusBadRequest, "participants[%d] is empty", i)
			}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	c, found := s.convs[id]
	if !found {
		c = &Conversation{ID: id, CreatedAt: s.now()}
		s.convs[id] = c
	}
	if b.Participants != nil {
		for _, p := range *b.Participants {
			if !slices.Contains(c.Participants, p) {
				c.Participants = append(c.Participants, p)
			}
		}
	}
	if b.Subject != nil {
		c.Subject = *b.Subject
	}
	c.Custom = mergeCustom(c.Custom, b.Custom)
	return ok(nil)
}

type messageBody struct {
	Text           *string            `json:"text"`
	Sender         *string            `json:"sender"`
	Type           *string            `json:"type"`
	Custom         map[string]*string `json:"custom"`
	IdempotencyKey *string            `json:"idempotencyKey"`
}

type messageID struct {
	ID string `json:"id"`
}

// postMessages validates the whole array before storing any of it, so a
// refused request changes nothing. A message whose idempotencyKey is already
// stored for the conversation (earlier, or earlier in the same array) is
// not stored again; its original id is returned in its place.
func (s *Server) postMessages(convID string, body []byte) result {
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) == 0 || t[0] != '[' {
		return reject(http.StatusBadRequest, "body must be a JSON array of messages")
	}
	var msgs []messageBody
	if err := decodeStrict(body, &msgs); err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}
	if len(msgs) == 0 || len(msgs) > provider.MaxMessagesPerPost {
		return reject(http.StatusBadRequest, "body must hold 1 to %d messages, got %d", provider.MaxMessagesPerPost, len(msgs))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	conv, found := s.convs[convID]
	if !found {
		return reject(http.StatusNotFound, "conversation not found")
	}
	for i, m := range msgs {
		if res, bad := s.checkMessageLocked(i, m, conv); bad {
			return res
		}
	}

	now := s.now()
	ids := make([]messageID, len(msgs))
	for i, m := range msgs {
		key := deref(m.IdempotencyKey)
		if key != "" {
			if id, dup := s.keys[convID][key]; dup {
				s.stats.DuplicatesSuppressed++
				ids[i] = messageID{ID: id}
				continue
			}
		}
		s.nextMsg++
		sm := StoredMessage{
			ID:             fmt.Sprintf("msg_%06d", s.nextMsg),
			ConversationID: convID,
			Text:           *m.Text,
			Sender:         deref(m.Sender),
			Type:           messageType(m),
			Custom:         mergeCustom(nil, m.Custom),
			IdempotencyKey: key,
			StoredAt:       now,
		}
		s.byConv[convID] = append(s.byConv[convID], len(s.messages))
		s.messages = append(s.messages, sm)
		if key != "" {
			if s.keys[convID] == nil {
				s.keys[convID] = map[string]string{}
			}
			s.keys[convID][key] = sm.ID
		}
		ids[i] = messageID{ID: sm.ID}
	}
	return ok(ids)
}

// checkMessageLocked validates message i of a post to conv. Caller holds mu.
func (s *Server) checkMessageLocked(i int, m messageBody, conv *Conversation) (result, bool) {
	if m.Text == nil || *m.Text == "" {
		return reject(http.StatusBadRequest, "messages[%d].text is required", i), true
	}
	for k, v := range m.Custom {
		if v == nil {
			return reject(http.StatusBadRequest, "messages[%d].custom.%s must be a string", i, k), true
		}
	}
	switch messageType(m) {
	case provider.SystemMessage:
		if m.Sender != nil {
			return reject(http.StatusBadRequest, "messages[%d].sender must be absent for a SystemMessage", i), true
		}
	case provider.UserMessage:
		sender := deref(m.Sender)
		switch {
		case sender == "":
			return reject(http.StatusBadRequest, "messages[%d].sender is required for a UserMessage", i), true
		case s.users[sender] == nil:
			return reject(http.StatusBadRequest, "messages[%d].sender %q is not a synchronised user", i, sender), true
		case !slices.Contains(conv.Participants, sender):
			return reject(http.StatusBadRequest, "messages[%d].sender %q is not a participant of the conversation", i, sender), true
		}
	default:
		return reject(http.StatusBadRequest, "messages[%d].type must be %q or %q", i, provider.UserMessage, provider.SystemMessage), true
	}
	return result{}, false
}

func messageType(m messageBody) string {
	if m.Type == nil {
		return provider.UserMessage
	}
	return *m.Type
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// conversationJSON is a conversation as GET returns it; participants are
// an object keyed by user id, as in TalkJS.
type conversationJSON struct {
	ID           string                     `json:"id"`
	Subject      *string                    `json:"subject"`
	Participants map[string]participantJSON `json:"participants"`
	Custom       map[string]string          `json:"custom"`
	CreatedAt    int64                      `json:"createdAt"`
}

type participantJSON struct {
	Access string `json:"access"`
	Notify bool   `json:"notify"`
}

// messageJSON is a message as GET .../messages returns it.
type messageJSON struct {
	ID             string            `json:"id"`
	ConversationID string            `json:"conversationId"`
	Type           string            `json:"type"`
	SenderID       *string           `json:"senderId"`
	Text           string            `json:"text"`
	Custom         map[string]string `json:"custom"`
	CreatedAt      int64             `json:"createdAt"`
}

type userJSON struct {
	User
	CreatedAt int64 `json:"createdAt"`
}

// get answers the GET routes.
func (s *Server) get(r *http.Request, rt route) result {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch rt.res {
	case resUser:
		u, found := s.users[rt.id]
		if !found {
			return reject(http.StatusNotFound, "user not found")
		}
		return ok(userJSON{User: u.clone(), CreatedAt: u.CreatedAt.UnixMilli()})
	case resConversation:
		c, found := s.convs[rt.id]
		if !found {
			return reject(http.StatusNotFound, "conversation not found")
		}
		out := conversationJSON{
			ID:           c.ID,
			Participants: map[string]participantJSON{},
			Custom:       maps.Clone(c.Custom),
			CreatedAt:    c.CreatedAt.UnixMilli(),
		}
		if c.Subject != "" {
			out.Subject = &c.Subject
		}
		for _, p := range c.Participants {
			out.Participants[p] = participantJSON{Access: "ReadWrite", Notify: true}
		}
		return ok(out)
	default:
		return s.listMessagesLocked(r, rt.id)
	}
}

// listMessagesLocked pages through a conversation's messages newest first:
// limit (1..100, default 10) per page, starting after the message id given
// in startingAfter. Caller holds mu.
func (s *Server) listMessagesLocked(r *http.Request, convID string) result {
	if _, found := s.convs[convID]; !found {
		return reject(http.StatusNotFound, "conversation not found")
	}
	q := r.URL.Query()
	limit := defaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			return reject(http.StatusBadRequest, "limit must be an integer in 1..%d", maxListLimit)
		}
		limit = n
	}
	idx := s.byConv[convID]
	end := len(idx) // newest first: walk idx backwards from end-1
	if after := q.Get("startingAfter"); after != "" {
		pos := slices.IndexFunc(idx, func(j int) bool { return s.messages[j].ID == after })
		if pos < 0 {
			return reject(http.StatusBadRequest, "startingAfter: no message %q in this conversation", after)
		}
		end = pos
	}
	data := []messageJSON{}
	for i := end - 1; i >= 0 && len(data) < limit; i-- {
		m := s.messages[idx[i]]
		mj := messageJSON{
			ID:             m.ID,
			ConversationID: m.ConversationID,
			Type:           m.Type,
			Text:           m.Text,
			Custom:         maps.Clone(m.Custom),
			CreatedAt:      m.StoredAt.UnixMilli(),
		}
		if m.Sender != "" {
			mj.SenderID = &m.Sender
		}
		data = append(data, mj)
	}
	return ok(map[string]any{"data": data})
}
