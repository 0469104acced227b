package relay

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestUnitWriteErrorCause(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("complete: %w", &pgconn.PgError{Code: code}) }
	for _, tc := range []struct {
		name string
		err  error
		want writeCause
	}{
		{"no answer", errors.New("read tcp: connection reset by peer"), writeUnavailable},
		{"lock_timeout", pg("55P03"), writeRejected},
		{"statement_timeout", pg("57014"), writeRejected},
		{"deadlock", pg("40P01"), writeRejected},
		{"check violation", pg("23514"), writeRejected},
		{"bad text", pg("22021"), writeRejected},
		{"trigger raised", pg("P0001"), writeRejected},
		{"admin shutdown", pg("57P01"), writeUnavailable},
		{"cannot connect now", pg("57P03"), writeUnavailable},
		{"disk full", pg("53100"), writeUnavailable},
		{"read-only standby", pg("25006"), writeUnavailable},
		{"unknown column (schema behind)", pg("42703"), writeUnavailable},
	} {
		if got := writeErrorCause(tc.err); got != tc.want {
			t.Errorf("%s: writeErrorCause = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestUnitSplitWrite(t *testing.T) {
	for _, tc := range []struct {
		n     int
		cause writeCause
		want  bool
	}{
		{1, writeRejected, false},
		{2, writeRejected, true},
		{500, writeRejected, true},
		{500, writeUnavailable, false},
	} {
		if got := splitWrite(tc.n, tc.cause); got != tc.want {
			t.Errorf("splitWrite(%d, %v) = %v, want %v", tc.n, tc.cause, got, tc.want)
		}
	}
}

func TestUnitAfterFailedWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    writeFailure
		want writeVerdict
	}{
		{"refused once", writeFailure{cause: writeRejected, rejections: 1, othersOK: true}, writeAgain},
		{"refused to the limit, others written", writeFailure{cause: writeRejected, rejections: maxWriteRejections, othersOK: true}, writeDrop},
		{"refused to the limit, nothing else written", writeFailure{cause: writeRejected, rejections: maxWriteRejections}, writeAgain},
		{"refused many times, nothing else written", writeFailure{cause: writeRejected, rejections: 100}, writeAgain},
		{"database unavailable", writeFailure{cause: writeUnavailable, rejections: maxWriteRejections, othersOK: true}, writeAgain},
		{"shutdown over", writeFailure{cause: writeUnavailable, shutdownOver: true}, writeDrop},
	} {
		if got := afterFailedWrite(tc.f); got != tc.want {
			t.Errorf("%s: afterFailedWrite = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestUnitLingerResults(t *testing.T) {
	t.Parallel()
	results := func(n int) []*result {
		rs := make([]*result, n)
		for i := range rs {
			rs[i] = &result{}
		}
		return rs
	}
	for _, tc := range []struct {
		name    string
		batch   int  // results in hand
		waiting int  // results in the queue
		closed  bool // the queue is closed
		want    int
	}{
		{"a lone result is written at once", 1, 5, false, 1},
		{"a burst takes what follows, up to a full batch", 2, 150, false, completionBatch},
		{"a burst ends when the queue closes", 2, 3, true, 5},
		{"a burst ends after the linger", 2, 0, false, 2},
		{"a full batch is written at once", completionBatch, 5, false, completionBatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := make(chan *result, tc.waiting)
			for _, r := range results(tc.waiting) {
				q <- r
			}
			if tc.closed {
				close(q)
			}
			if got := len(lingerResults(q, results(tc.batch))); got != tc.want {
				t.Errorf("lingerResults wrote %d results, want %d", got, tc.want)
			}
		})
	}
}
