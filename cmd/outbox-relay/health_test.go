package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthCommand(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"ready":false,"reason":"database unreachable"}`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	closed := httptest.NewServer(mux)
	closedAddr := closed.Listener.Addr().String()
	closed.Close()

	tests := []struct {
		name     string
		addr     string // "<unset>" leaves OUTBOX_HTTP_ADDR out
		args     []string
		wantCode int
		wantOut  string
	}{
		{"alive", srv.Listener.Addr().String(), nil, 0, "/healthz ok"},
		{"all interfaces is asked on loopback", ":" + port, nil, 0, "/healthz ok"},
		{"0.0.0.0 is asked on loopback", "0.0.0.0:" + port, nil, 0, "/healthz ok"},
		{"not ready", srv.Listener.Addr().String(), []string{"--ready"}, 1, "database unreachable"},
		{"nothing listening", closedAddr, nil, 1, "ask /healthz"},
		{"unset", "<unset>", nil, 1, "OUTBOX_HTTP_ADDR: not set"},
		{"disabled", "", nil, 1, "OUTBOX_HTTP_ADDR: not set"},
		{"port picked at start", "127.0.0.1:0", nil, 1, "OUTBOX_HTTP_ADDR: \"127.0.0.1:0\" has no fixed port"},
		{"not an address", "localhost", nil, 1, "OUTBOX_HTTP_ADDR: \"localhost\" is not host:port"},
		{"bad timeout", srv.Listener.Addr().String(), []string{"--timeout", "0s"}, 2, "--timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			if tt.addr != "<unset>" {
				env["OUTBOX_HTTP_ADDR"] = tt.addr
			}
			code, stdout, stderr := runCLI(t, env, append([]string{"health"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(stdout+stderr, tt.wantOut) {
				t.Errorf("health %v with OUTBOX_HTTP_ADDR=%q: exit %d, out %q, err %q; want exit %d mentioning %q",
					tt.args, tt.addr, code, stdout, stderr, tt.wantCode, tt.wantOut)
			}
		})
	}
}
