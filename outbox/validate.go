package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Limits enforced by Validate and, identically, by the database function
// outbox.validate_payload (migrations/00002_validate_payload.sql). The
// insert trigger asks outbox.payload_ok first (migrations/00014), which
// accepts only payloads these rules accept: a rule made stricter changes
// it too.
const (
	// MaxPayloadBytes is the largest payload, measured as Postgres prints
	// it (octet_length(payload::text)).
	MaxPayloadBytes = 256 << 10
	// MaxUsers is the most users an intent may carry.
	MaxUsers = 100
	// MaxParticipants is the most participants a conversation may list.
	MaxParticipants = 100
	// MaxMessages is the most messages an intent may carry.
	MaxMessages = 100
	// MaxIDLength is the most characters in a user or conversation id.
	MaxIDLength = 256
	// MaxKeyLength is the most characters in an idempotency key.
	MaxKeyLength = 256
)

// Rules, worded exactly as the database words them.
const (
	ruleRequired        = "is required"
	ruleNotEmpty        = "must not be empty"
	ruleIDTooLong       = "must be at most 256 characters"
	ruleControl         = "must not contain control characters"
	ruleEmails          = "must be a non-empty array of strings"
	ruleTooManyEntries  = "must have at most 100 entries"
	ruleMessageType     = `must be "UserMessage" or "SystemMessage"`
	ruleSenderRequired  = "is required for a UserMessage"
	ruleSenderForbidden = "must be absent for a SystemMessage"
	ruleSenderUnknown   = "must be one of the conversation's participants or users"
	// JSON text in Postgres cannot hold these, so only Go reports them.
	ruleNUL     = "must not contain NUL characters"
	ruleUTF8    = "must be valid UTF-8"
	ruleKeySize = "must be 1 to 256 characters"
)

// ErrInvalid matches every *ValidationError: errors.Is(err, ErrInvalid)
// tells a refused intent from a database failure.
var ErrInvalid = errors.New("invalid intent")

// ValidationError reports the first rule an intent breaks. Enqueue and
// Validate return it before touching the database; Enqueue also returns it
// when the database refuses the payload (then it wraps the *pgconn.PgError).
type ValidationError struct {
	// Field is the path of the offending value in the payload, such as
	// "conversation.id" or "users[1].email"; empty for a rule about the
	// payload as a whole (its size); "key" for the idempotency key.
	Field string
	// Rule says what is wrong, such as "is required".
	Rule string

	isKey bool
	err   error
}

// Error returns "invalid intent payload: <field>: <rule>", the message the
// database gives for the same payload ("invalid intent payload: <rule>"
// without a field, "invalid intent key: <rule>" for the key).
func (e *ValidationError) Error() string {
	switch {
	case e.isKey:
		return "invalid intent key: " + e.Rule
	case e.Field == "":
		return "invalid intent payload: " + e.Rule
	default:
		return "invalid intent payload: " + e.Field + ": " + e.Rule
	}
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns the database's error when the database found the problem.
func (e *ValidationError) Unwrap() error { return e.err }

func invalid(field, rule string) *ValidationError {
	return &ValidationError{Field: field, Rule: rule}
}

// Validate checks the intent against the payload rules of the contract, the
// same rules the database enforces on INSERT, and returns a
// *ValidationError naming the first field that breaks one.
//
// The rules: Conversation.ID is required. Each user needs an ID, a Name and
// at least one non-empty Email; user ids are unique. Participants, when
// given, are unique. Each message needs Text; a UserMessage (Type empty or
// UserMessage) needs a Sender, who must be a participant when Participants
// is given, else one of Users when there are any; a SystemMessage has no
// Sender. Ids (conversation, users, participants, senders) are at most
// MaxIDLength characters without control characters. At most MaxUsers,
// MaxParticipants and MaxMessages, and MaxPayloadBytes in all. Strings must
// be valid UTF-8 without NUL characters.
func (in Intent) Validate() error {
	if _, err := in.encode(); err != nil {
		return err
	}
	return nil
}

// encode returns the intent's payload, checked. The size comes first, as in
// the database.
func (in *Intent) encode() ([]byte, error) {
	payload, err := json.Marshal(in)
	if err != nil {
		// Only strings, slices and maps of strings: cannot happen.
		return nil, fmt.Errorf("outbox: encode intent: %w", err)
	}
	if n := jsonbTextLen(payload); n > MaxPayloadBytes {
		return nil, invalid("", fmt.Sprintf("is %d bytes as JSON text, more than the limit of %d", n, MaxPayloadBytes))
	}
	if err := in.check(); err != nil {
		return nil, err
	}
	return payload, nil
}

// check applies the field rules in the order outbox.validate_payload does,
// so both report the same first violation.
func (in *Intent) check() *ValidationError {
	c := &in.Conversation
	if c.ID == "" {
		return invalid("conversation.id", ruleRequired)
	}
	if r := idRule(c.ID); r != "" {
		return invalid("conversation.id", r)
	}
	if r := textRule(c.Subject); r != "" {
		return invalid("conversation.subject", r)
	}
	if err := checkCustom("conversation.custom", c.Custom); err != nil {
		return err
	}
	if len(c.Participants) > MaxParticipants {
		return invalid("conversation.participants", ruleTooManyEntries)
	}
	for i, p := range c.Participants {
		rule := ""
		if p == "" {
			rule = ruleNotEmpty
		} else if rule = idRule(p); rule == "" {
			if j := indexOf(c.Participants[:i], p); j >= 0 {
				rule = fmt.Sprintf("duplicates conversation.participants[%d]", j)
			}
		}
		if rule != "" {
			return invalid(fmt.Sprintf("conversation.participants[%d]", i), rule)
		}
	}

	if len(in.Users) > MaxUsers {
		return invalid("users", ruleTooManyEntries)
	}
	for i := range in.Users {
		if err := checkUser(in.Users, i); err != nil {
			return err
		}
	}

	if len(in.Messages) > MaxMessages {
		return invalid("messages", ruleTooManyEntries)
	}
	members := in.ResolvedParticipants()
	for i := range in.Messages {
		if err := checkMessage(&in.Messages[i], i, members); err != nil {
			return err
		}
	}
	return nil
}

func checkUser(users []User, i int) *ValidationError {
	u := &users[i]
	prefix := fmt.Sprintf("users[%d].", i)
	if u.ID == "" {
		return invalid(prefix+"id", ruleRequired)
	}
	if r := idRule(u.ID); r != "" {
		return invalid(prefix+"id", r)
	}
	if u.Name == "" {
		return invalid(prefix+"name", ruleRequired)
	}
	if r := textRule(u.Name); r != "" {
		return invalid(prefix+"name", r)
	}
	if u.Email == nil {
		return invalid(prefix+"email", ruleRequired)
	}
	if len(u.Email) == 0 {
		return invalid(prefix+"email", ruleEmails)
	}
	for j, e := range u.Email {
		if e == "" {
			return invalid(fmt.Sprintf("%semail[%d]", prefix, j), ruleNotEmpty)
		}
		if r := textRule(e); r != "" {
			return invalid(fmt.Sprintf("%semail[%d]", prefix, j), r)
		}
	}
	if r := textRule(u.PhotoURL); r != "" {
		return invalid(prefix+"photoUrl", r)
	}
	if r := textRule(u.WelcomeMessage); r != "" {
		return invalid(prefix+"welcomeMessage", r)
	}
	if r := textRule(u.Role); r != "" {
		return invalid(prefix+"role", r)
	}
	if err := checkCustom(prefix+"custom", u.Custom); err != nil {
		return err
	}
	for j := range i {
		if users[j].ID == u.ID {
			return invalid(prefix+"id", fmt.Sprintf("duplicates users[%d].id", j))
		}
	}
	return nil
}

// checkMessage checks messages[i]; members is who may send a UserMessage
// (nil: anyone).
func checkMessage(m *Message, i int, members []string) *ValidationError {
	prefix := fmt.Sprintf("messages[%d].", i)
	switch m.Type {
	case SystemMessage:
		if m.Sender != "" {
			return invalid(prefix+"sender", ruleSenderForbidden)
		}
	case "", UserMessage:
		if m.Sender == "" {
			return invalid(prefix+"sender", ruleSenderRequired)
		}
		if r := idRule(m.Sender); r != "" {
			return invalid(prefix+"sender", r)
		}
		if members != nil && indexOf(members, m.Sender) < 0 {
			return invalid(prefix+"sender", ruleSenderUnknown)
		}
	default:
		return invalid(prefix+"type", ruleMessageType)
	}
	if m.Text == "" {
		return invalid(prefix+"text", ruleRequired)
	}
	if r := textRule(m.Text); r != "" {
		return invalid(prefix+"text", r)
	}
	return checkCustom(prefix+"custom", m.Custom)
}

// checkCustom reports the first bad entry in jsonb key order (shorter keys
// first, then bytewise), the order the database walks an object in.
func checkCustom(field string, custom map[string]string) *ValidationError {
	var (
		badKey  string
		badRule string
	)
	for k, v := range custom {
		r := textRule(k)
		if r == "" {
			r = textRule(v)
		}
		if r != "" && (badRule == "" || jsonbKeyLess(k, badKey)) {
			badKey, badRule = k, r
		}
	}
	if badRule != "" {
		return invalid(field+"."+badKey, badRule)
	}
	return nil
}

func jsonbKeyLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// idRule returns the rule a non-empty user or conversation id breaks, or "".
func idRule(id string) string {
	if len(id) > MaxIDLength && utf8.RuneCountInString(id) > MaxIDLength {
		return ruleIDTooLong
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c == 0x7f {
			return ruleControl
		}
	}
	if !utf8.ValidString(id) {
		return ruleUTF8
	}
	return ""
}

// textRule returns the rule a string breaks that Postgres JSON cannot hold
// (so the database never sees it), or "".
func textRule(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		return ruleNUL
	}
	if !utf8.ValidString(s) {
		return ruleUTF8
	}
	return ""
}

func indexOf(ss []string, s string) int {
	for i, x := range ss {
		if x == s {
			return i
		}
	}
	return -1
}

// checkKey validates an idempotency key.
func checkKey(key string) *ValidationError {
	rule := ""
	switch {
	case key == "" || len(key) > MaxKeyLength && utf8.RuneCountInString(key) > MaxKeyLength:
		rule = ruleKeySize
	case strings.IndexByte(key, 0) >= 0:
		rule = ruleNUL
	case !utf8.ValidString(key):
		rule = ruleUTF8
	default:
		return nil
	}
	return &ValidationError{Field: "key", Rule: rule, isKey: true}
}

// jsonbTextLen returns the length of Postgres's text form of the JSON
// document b (compact, as encoding/json writes it), that is
// octet_length(b::jsonb::text): Postgres prints ", " and ": " between
// elements, writes every character raw except '"', '\\' and control
// characters, and escapes those as \b \f \n \r \t or \u00XX.
func jsonbTextLen(b []byte) int {
	n := 0
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inString {
			switch c {
			case '"':
				inString = true
				n++
			case ',', ':':
				n += 2
			default:
				n++
			}
			continue
		}
		switch {
		case c == '"':
			inString = false
			n++
		case c == '\\' && i+1 < len(b):
			i++
			switch b[i] {
			case 'u':
				r, width := decodeEscape(b[i-1:])
				i += width - 2
				n += pgEscapedLen(r)
			case '/':
				n++
			default: // \" \\ \b \f \n \r \t, printed the same by Postgres
				n += 2
			}
		default:
			n++
		}
	}
	return n
}

// decodeEscape decodes the \uXXXX escape (or surrogate pair) at the start of
// b, returning the rune and the bytes it took.
func decodeEscape(b []byte) (rune, int) {
	r1, ok := hex4(b)
	if !ok {
		return utf8.RuneError, 2
	}
	if utf16.IsSurrogate(r1) {
		if r2, ok := hex4(b[6:]); ok {
			if r := utf16.DecodeRune(r1, r2); r != utf8.RuneError {
				return r, 12
			}
		}
	}
	return r1, 6
}

// hex4 decodes "\uXXXX" at the start of b.
func hex4(b []byte) (rune, bool) {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[2:6] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// pgEscapedLen is how many bytes Postgres prints for r inside a string.
func pgEscapedLen(r rune) int {
	switch {
	case r == '"' || r == '\\' || r == '\b' || r == '\f' || r == '\n' || r == '\r' || r == '\t':
		return 2
	case r < 0x20:
		return 6
	case utf8.ValidRune(r):
		return utf8.RuneLen(r)
	default:
		return 3 // printed as U+FFFD
	}
}
