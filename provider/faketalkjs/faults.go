package faketalkjs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// DefaultRetryAfter is the Retry-After sent with an injected 429 when
// Faults.RetryAfter is zero.
const DefaultRetryAfter = time.Second

// Faults are the fault-injection knobs. The zero value injects nothing.
// They apply to API requests under /v1/ only, never to the /_fake/ admin
// routes, in this order: Down, Hang, Latency, RateLimit (with its
// QueueLength), TooManyRequests, FailBefore, then the request is processed
// (BatchUnsupported and RejectUserIDs are part of processing), then
// FailAfterUserIDs, FailAfter or DropAfter if it succeeded.
//
// Probabilities are in [0, 1]; draws come from a generator seeded with
// Config.Seed, so a sequence of requests sent one at a time meets the same
// faults on every run.
//
// In JSON (the /_fake/faults admin route) the field names are camelCase
// (failBefore, failAfter, tooManyRequests, retryAfter, dropAfter, latency,
// rateLimit, burst, queueLength, rejectUserIds, failAfterUserIds,
// batchUnsupported, down, hang) and durations are either Go duration
// strings ("1.5s", "20ms") or numbers of milliseconds.
type Faults struct {
	// FailBefore is the probability of answering 500 without processing the
	// request.
	FailBefore float64
	// FailAfter is the probability of answering 500 after the request was
	// processed successfully and applied: the caller cannot tell it worked.
	FailAfter float64
	// TooManyRequests is the probability of answering 429 without
	// processing the request.
	TooManyRequests float64
	// RetryAfter is sent as the Retry-After header (whole seconds, rounded
	// up) with every 429 from TooManyRequests. Zero means DefaultRetryAfter;
	// a negative value sends no header.
	RetryAfter time.Duration
	// DropAfter is the probability of closing the connection without a
	// response after the request was processed successfully and applied: a
	// lost response.
	DropAfter float64
	// Latency is added before processing each request. A request whose
	// client goes away while waiting is abandoned unprocessed.
	Latency time.Duration
	// RateLimit is a sustained rate in requests per second across all
	// clients, 0 for none. Requests over it get 429 with a Retry-After
	// saying when the bucket has a token again (whole seconds, at least 1),
	// unless QueueLength lets them wait.
	RateLimit float64
	// Burst is the token bucket size for RateLimit; 0 means
	// max(1, ceil(RateLimit)).
	Burst int
	// QueueLength is how many requests over RateLimit may wait for their
	// turn at once, as TalkJS queues before it refuses: a queued request is
	// answered late (when the bucket has its token), and only a request
	// finding the queue full gets 429. 0 (the default) queues nothing:
	// every request over the rate gets 429 at once.
	QueueLength int
	// RejectUserIDs are user ids whose PUT is answered with 400, as if
	// TalkJS refused their content.
	RejectUserIDs []string
	// FailAfterUserIDs are user ids whose PUT is applied and then answered
	// with 500: the caller cannot tell the new content is stored.
	FailAfterUserIDs []string
	// BatchUnsupported, when 404 or 405, answers every request to the batch
	// users route (/v1/{appId}/users) with that status, as an API without
	// the route would; 0 serves it.
	BatchUnsupported int
	// Down closes every API request's connection at once without
	// processing it or answering: an outage.
	Down bool
	// Hang accepts every API request and never answers it: a black hole
	// (a stuck load balancer or server). The request is held, unprocessed,
	// until its client goes away; turning Hang off does not release the
	// requests already held.
	Hang bool
}

// Validate reports the first knob out of range. SetFaults clamps instead;
// Validate is for faults read from users (flags, the admin route).
func (f Faults) Validate() error {
	probs := []struct {
		name string
		p    float64
	}{
		{"failBefore", f.FailBefore},
		{"failAfter", f.FailAfter},
		{"tooManyRequests", f.TooManyRequests},
		{"dropAfter", f.DropAfter},
	}
	for _, p := range probs {
		if math.IsNaN(p.p) || p.p < 0 || p.p > 1 {
			return fmt.Errorf("faketalkjs: %s must be a probability in [0, 1], got %v", p.name, p.p)
		}
	}
	switch {
	case f.Latency < 0:
		return fmt.Errorf("faketalkjs: latency must not be negative, got %s", f.Latency)
	case math.IsNaN(f.RateLimit) || math.IsInf(f.RateLimit, 0) || f.RateLimit < 0:
		return fmt.Errorf("faketalkjs: rateLimit must be a finite number >= 0, got %v", f.RateLimit)
	case f.Burst < 0:
		return fmt.Errorf("faketalkjs: burst must not be negative, got %d", f.Burst)
	case f.QueueLength < 0:
		return fmt.Errorf("faketalkjs: queueLength must not be negative, got %d", f.QueueLength)
	case f.BatchUnsupported != 0 && f.BatchUnsupported != http.StatusNotFound && f.BatchUnsupported != http.StatusMethodNotAllowed:
		return fmt.Errorf("faketalkjs: batchUnsupported must be 0, 404 or 405, got %d", f.BatchUnsupported)
	}
	return nil
}

// normalized returns f with every knob clamped into range and its slices
// copied, so the Server never shares memory with its caller.
func (f Faults) normalized() Faults {
	clamp := func(p float64) float64 {
		if math.IsNaN(p) || p < 0 {
			return 0
		}
		return min(p, 1)
	}
	f.FailBefore = clamp(f.FailBefore)
	f.FailAfter = clamp(f.FailAfter)
	f.TooManyRequests = clamp(f.TooManyRequests)
	f.DropAfter = clamp(f.DropAfter)
	f.Latency = max(f.Latency, 0)
	if math.IsNaN(f.RateLimit) || math.IsInf(f.RateLimit, 0) || f.RateLimit < 0 {
		f.RateLimit = 0
	}
	f.Burst = max(f.Burst, 0)
	f.QueueLength = max(f.QueueLength, 0)
	if f.BatchUnsupported != http.StatusNotFound && f.BatchUnsupported != http.StatusMethodNotAllowed {
		f.BatchUnsupported = 0
	}
	f.RejectUserIDs = slices.Clone(f.RejectUserIDs)
	f.FailAfterUserIDs = slices.Clone(f.FailAfterUserIDs)
	return f
}

// burst is the effective bucket size of the rate limit.
func (f Faults) burst() int {
	if f.Burst > 0 {
		return f.Burst
	}
	return max(1, int(math.Ceil(f.RateLimit)))
}

// faultsJSON is the wire form of Faults.
type faultsJSON struct {
	FailBefore       float64      `json:"failBefore"`
	FailAfter        float64      `json:"failAfter"`
	TooManyRequests  float64      `json:"tooManyRequests"`
	RetryAfter       jsonDuration `json:"retryAfter"`
	DropAfter        float64      `json:"dropAfter"`
	Latency          jsonDuration `json:"latency"`
	RateLimit        float64      `json:"rateLimit"`
	Burst            int          `json:"burst"`
	QueueLength      int          `json:"queueLength"`
	RejectUserIDs    []string     `json:"rejectUserIds"`
	FailAfterUserIDs []string     `json:"failAfterUserIds"`
	BatchUnsupported int          `json:"batchUnsupported"`
	Down             bool         `json:"down"`
	Hang             bool         `json:"hang"`
}

// wire converts f to its wire form.
func (f Faults) wire() faultsJSON {
	return faultsJSON{
		FailBefore:       f.FailBefore,
		FailAfter:        f.FailAfter,
		TooManyRequests:  f.TooManyRequests,
		RetryAfter:       jsonDuration(f.RetryAfter),
		DropAfter:        f.DropAfter,
		Latency:          jsonDuration(f.Latency),
		RateLimit:        f.RateLimit,
		Burst:            f.Burst,
		QueueLength:      f.QueueLength,
		RejectUserIDs:    f.RejectUserIDs,
		FailAfterUserIDs: f.FailAfterUserIDs,
		BatchUnsupported: f.BatchUnsupported,
		Down:             f.Down,
		Hang:             f.Hang,
	}
}

// faults converts the wire form back.
func (w faultsJSON) faults() Faults {
	return Faults{
		FailBefore:       w.FailBefore,
		FailAfter:        w.FailAfter,
		TooManyRequests:  w.TooManyRequests,
		RetryAfter:       time.Duration(w.RetryAfter),
		DropAfter:        w.DropAfter,
		Latency:          time.Duration(w.Latency),
		RateLimit:        w.RateLimit,
		Burst:            w.Burst,
		QueueLength:      w.QueueLength,
		RejectUserIDs:    w.RejectUserIDs,
		FailAfterUserIDs: w.FailAfterUserIDs,
		BatchUnsupported: w.BatchUnsupported,
		Down:             w.Down,
		Hang:             w.Hang,
	}
}

// MarshalJSON encodes f with camelCase names and duration strings.
func (f Faults) MarshalJSON() ([]byte, error) {
	w := f.wire()
	if w.RejectUserIDs == nil {
		w.RejectUserIDs = []string{}
	}
	if w.FailAfterUserIDs == nil {
		w.FailAfterUserIDs = []string{}
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes the form written by MarshalJSON; durations may also
// be numbers of milliseconds. Fields absent from data keep their value in
// f, so decoding onto the current faults is a partial update. Unknown
// fields are an error, so a typo is not silently ignored.
func (f *Faults) UnmarshalJSON(data []byte) error {
	aux := f.wire()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return fmt.Errorf("faketalkjs: decode faults: %w", err)
	}
	*f = aux.faults()
	return nil
}

// jsonDuration is a time.Duration written as a Go duration string and read
// from either such a string or a number of milliseconds.
type jsonDuration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string or a number of milliseconds.
func (d *jsonDuration) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = jsonDuration(v)
		return nil
	}
	ms, err := strconv.ParseFloat(string(data), 64)
	if err != nil || math.IsNaN(ms) || math.IsInf(ms, 0) {
		return errors.New("duration must be a Go duration string or a number of milliseconds")
	}
	*d = jsonDuration(time.Duration(ms * float64(time.Millisecond)))
	return nil
}

// retryAfterSeconds renders d as a Retry-After value in whole seconds,
// rounded up so a client never retries early, and at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

// dropConnection closes the client's connection without writing a response.
// Hijacking gives a clean close on HTTP/1; where it is not supported
// (HTTP/2) aborting the handler resets the stream instead.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}
