package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// -health asks the admin API on loopback and fails when nothing answers
// or the answer is not 200.
func TestHealthFlag(t *testing.T) {
	t.Parallel()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_fake/stats" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(ok.Close)
	broken := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(broken.Close)
	port := ok.Listener.Addr().String()[strings.LastIndex(ok.Listener.Addr().String(), ":"):]

	if err := run([]string{"-health", "-addr", port}, func(string) string { return "" }, &strings.Builder{}); err != nil {
		t.Errorf("-health against a live fake on %s: %v", port, err)
	}
	if err := run([]string{"-health", "-addr", broken.Listener.Addr().String()}, func(string) string { return "" }, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("-health against a 404: %v, want an error naming the status", err)
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	addr := closed.Listener.Addr().String()
	closed.Close()
	if err := run([]string{"-health", "-addr", addr}, func(string) string { return "" }, &strings.Builder{}); err == nil {
		t.Error("-health with nothing listening succeeded")
	}
}
