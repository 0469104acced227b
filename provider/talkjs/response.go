package talkjs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

const (
	// errorBodyPrefix is how much of a failed response's body an error
	// quotes: enough for TalkJS's error code and reason.
	errorBodyPrefix = 200
	// maxDrain is how much of a body is read and thrown away so the
	// connection can be reused; a longer body costs a new connection.
	maxDrain = 64 << 10
)

// drainAndClose reads what is left of a response body (up to maxDrain)
// and closes it, so the transport can reuse the connection.
func drainAndClose(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	_ = resp.Body.Close()
}

// statusError builds the *provider.Error of a non-2xx response, and returns
// the body it read (up to maxDrain bytes). The error quotes the start of
// the body with any credential scrubbed, in case a server or proxy echoes
// the request's headers; the body returned is scrubbed alike.
func (c *Client) statusError(method, path string, resp *http.Response, token string) (*provider.Error, []byte) {
	// Scrub before cutting, so a credential straddling the cut cannot leave
	// a piece behind. The rest of the body is drained by the caller anyway.
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxDrain))
	for _, secret := range []string{c.secretKey, token} {
		if secret != "" {
			raw = bytes.ReplaceAll(raw, []byte(secret), []byte("<redacted>"))
		}
	}
	body := string(raw)
	if len(body) > errorBodyPrefix {
		body = body[:errorBodyPrefix]
	}
	// Cutting at a byte count can split a UTF-8 sequence; drop the pieces.
	body = strings.TrimSpace(strings.ToValidUTF8(body, ""))
	msg := fmt.Sprintf("%s %s: response body %q", method, path, body)
	if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		msg += fmt.Sprintf(" (redirect to %q: check BaseURL)", loc)
	}
	e := &provider.Error{
		Kind:   provider.ClassifyStatus(resp.StatusCode),
		Status: resp.StatusCode,
		Err:    errors.New(msg),
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), c.now())
	}
	return e, raw
}

// invalidEntries reads the entries a batch 400 names: the keys of the
// answer's JSON object that are ids of users sent, in the order sent,
// with what the answer says of each. TalkJS documents the answer only as
// an object holding the invalid entries' messages, so this is best
// effort: any other body (an error code and reason, text, a truncated
// object) names none, and the caller must find the invalid entries itself.
func invalidEntries(raw []byte, sent []provider.User) (ids, reasons []string) {
	var named map[string]json.RawMessage
	if json.Unmarshal(raw, &named) != nil {
		return nil, nil
	}
	for _, u := range sent {
		if v, ok := named[u.ID]; ok {
			ids = append(ids, u.ID)
			reasons = append(reasons, entryReason(v))
		}
	}
	return ids, reasons
}

// maxReason bounds the text kept of one invalid entry's message.
const maxReason = 300

// entryReason is an invalid entry's message as text: a JSON string's
// value, else the JSON itself, cut to maxReason bytes on a rune boundary.
func entryReason(v json.RawMessage) string {
	var text string
	if json.Unmarshal(v, &text) != nil {
		text = string(v)
	}
	if len(text) > maxReason {
		text = strings.ToValidUTF8(text[:maxReason], "") + "…"
	}
	return strings.TrimSpace(text)
}

// parseRetryAfter reads a Retry-After value in either of its forms,
// delay-seconds ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"),
// as a wait from now. It returns 0 when the header is absent, malformed or
// in the past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		const maxSecs = math.MaxInt64 / int64(time.Second)
		switch {
		case secs <= 0:
			return 0
		case secs > maxSecs:
			return time.Duration(maxSecs) * time.Second
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
