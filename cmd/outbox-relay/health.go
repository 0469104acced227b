package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/sethvargo/go-envconfig"
)

const healthHelp = `Usage: outbox-relay health [--ready] [--timeout D]

Asks the relay running on this host whether it is alive (/healthz) or, with
--ready, ready to deliver (/readyz), at OUTBOX_HTTP_ADDR; an address on all
interfaces (":9090", "0.0.0.0:9090") is asked on loopback. Exits 0 when the
answer is 200 OK, 1 otherwise. Meant for container health checks, so that an
image needs no curl.

Environment:
  OUTBOX_HTTP_ADDR   the relay's listen address, with an explicit port
                     (required: the relay's default port is picked at start)
`

func cmdHealth(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) error {
	fs := newFlags("health", healthHelp, stderr)
	ready := fs.Bool("ready", false, "ask /readyz instead of /healthz")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "--timeout must be positive")
		return errUsage
	}
	addr, _ := env.Lookup("OUTBOX_HTTP_ADDR")
	target, err := healthTarget(addr)
	if err != nil {
		return fmt.Errorf("configuration: OUTBOX_HTTP_ADDR: %w", err)
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+path, nil)
	if err != nil {
		return err
	}
	// Straight to the relay: a proxy from the environment has no business here.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("ask %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s: %s", path, resp.Status, oneLine(string(body), 300))
	}
	fmt.Fprintf(stdout, "%s %s", path, body)
	return nil
}

// healthTarget turns a listen address into one to ask on this host.
func healthTarget(listen string) (string, error) {
	if listen == "" {
		return "", fmt.Errorf("not set (or empty, which disables the listener): set it to the relay's address, e.g. :9090")
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port: %w", listen, err)
	}
	if port == "0" || port == "" {
		return "", fmt.Errorf("%q has no fixed port (the relay picks one at start): set an explicit port", listen)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}
