// Command fake-talkjs serves the in-memory fake TalkJS API of
// provider/faketalkjs over HTTP, for the demo, Docker Compose and manual
// testing of the relay.
//
// Every flag can also be set by an environment variable (the flag wins):
// -app-id by TALKJS_APP_ID, every other flag by FAKE_TALKJS_ followed by
// its name in upper case with '-' as '_' (-fail-before by
// FAKE_TALKJS_FAIL_BEFORE). The secret key is read from TALKJS_SECRET_KEY
// only, never from a flag, and never printed.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

const shutdownTimeout = 10 * time.Second

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fake-talkjs:", err)
		os.Exit(1)
	}
}

// options are the parsed command line.
type options struct {
	addr, adminAddr string
	appID           string
	seed            uint64
	faults          faketalkjs.Faults
	refuseWhenDown  bool
	health          bool
	logLevel        slog.Level
}

func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("fake-talkjs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", ":8090", "address to serve the TalkJS API (and, without -admin-addr, the /_fake/ admin API) on")
	fs.StringVar(&o.adminAddr, "admin-addr", "", "serve the /_fake/ admin API on this separate address instead")
	fs.StringVar(&o.appID, "app-id", "", "TalkJS app id to serve (required; env TALKJS_APP_ID)")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the fault generator: same seed, same faults for the same request sequence")
	fs.Float64Var(&o.faults.FailBefore, "fail-before", 0, "probability of a 500 without processing the request")
	fs.Float64Var(&o.faults.FailAfter, "fail-after", 0, "probability of a 500 after the request was applied")
	fs.Float64Var(&o.faults.TooManyRequests, "too-many-requests", 0, "probability of a 429 without processing the request")
	fs.DurationVar(&o.faults.RetryAfter, "retry-after", 0, "Retry-After sent with -too-many-requests 429s (0: 1s, negative: no header)")
	fs.Float64Var(&o.faults.DropAfter, "drop-after", 0, "probability of closing the connection without a response after the request was applied")
	fs.DurationVar(&o.faults.Latency, "latency", 0, "delay added before processing each request")
	fs.Float64Var(&o.faults.RateLimit, "rate-limit", 0, "requests per second accepted across all clients, 0 for unlimited; over it: 429")
	fs.IntVar(&o.faults.Burst, "burst", 0, "token bucket size of -rate-limit (0: ceil of the rate)")
	fs.Func("reject-user", "user id whose PUT gets 400 (repeatable, or comma-separated)", func(v string) error {
		for id := range strings.SplitSeq(v, ",") {
			if id = strings.TrimSpace(id); id != "" {
				o.faults.RejectUserIDs = append(o.faults.RejectUserIDs, id)
			}
		}
		return nil
	})
	fs.BoolVar(&o.faults.Down, "down", false, "start down: close every API connection without answering")
	fs.BoolVar(&o.faults.Hang, "hang", false, "accept every API request and never answer it (until its client gives up)")
	fs.BoolVar(&o.refuseWhenDown, "refuse-when-down", false, "while down, also stop listening on -addr so connections are refused (needs -admin-addr)")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.BoolVar(&o.health, "health", false, "ask the fake serving at -admin-addr (else -addr) on this host for its stats, exit 0 if it answers (a container health check)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: fake-talkjs [flags]

Serves an in-memory fake of the TalkJS REST API for the outbox relay's
demo and tests, with fault injection. The secret key is read from the
TALKJS_SECRET_KEY environment variable. Every flag may also be set by an
environment variable: TALKJS_APP_ID for -app-id, FAKE_TALKJS_<FLAG> for the
others (e.g. FAKE_TALKJS_FAIL_BEFORE=0.05); a flag given wins.

Admin API (no authentication): GET /_fake/stats, GET|PUT|PATCH /_fake/faults
(JSON, durations as "20ms" or a number of milliseconds), POST /_fake/reset
(?data=true also drops stored data).

Flags:
`)
		fs.PrintDefaults()
	}

	// Environment first, so that flags given on the command line override it.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if v := getenv(name); v != "" && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s: %w", name, err)
			}
		}
	})
	if envErr != nil {
		return o, envErr
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	case o.health:
		return o, nil
	case o.appID == "":
		return o, errors.New("-app-id (or TALKJS_APP_ID) is required")
	case o.refuseWhenDown && o.adminAddr == "":
		return o, errors.New("-refuse-when-down needs -admin-addr: otherwise nothing could switch the fake back up")
	}
	if err := o.faults.Validate(); err != nil {
		return o, err
	}
	return o, nil
}

func envName(flagName string) string {
	if flagName == "app-id" {
		return "TALKJS_APP_ID"
	}
	return "FAKE_TALKJS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func run(args []string, getenv func(string) string, stderr io.Writer) error {
	o, err := parseOptions(args, getenv, stderr)
	if err != nil {
		return err
	}
	if o.health {
		return checkHealth(cmp.Or(o.adminAddr, o.addr))
	}
	secret := getenv("TALKJS_SECRET_KEY")
	if secret == "" {
		return errors.New("TALKJS_SECRET_KEY is required")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fake := faketalkjs.New(faketalkjs.Config{
		AppID:     o.appID,
		SecretKey: secret,
		Faults:    o.faults,
		Seed:      o.seed,
	})

	// downChanged wakes the API listener loop when the admin API may have
	// changed Down; one pending signal is enough.
	downChanged := make(chan struct{}, 1)
	api := &http.Server{Handler: fake, ReadHeaderTimeout: 10 * time.Second}
	servers := []*http.Server{api}
	if o.adminAddr != "" {
		api.Handler = fake.APIHandler()
		admin := &http.Server{
			Addr:              o.adminAddr,
			Handler:           notifyOnWrite(fake.AdminHandler(), downChanged),
			ReadHeaderTimeout: 10 * time.Second,
		}
		servers = append(servers, admin)
	}

	errc := make(chan error, len(servers))
	if o.refuseWhenDown {
		go func() { errc <- serveRefusingWhenDown(ctx, log, api, o.addr, fake, downChanged) }()
	} else {
		ln, err := net.Listen("tcp", o.addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", o.addr, err)
		}
		go func() { errc <- serve(api, ln) }()
	}
	if len(servers) > 1 {
		admin := servers[1]
		ln, err := net.Listen("tcp", admin.Addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", admin.Addr, err)
		}
		go func() { errc <- serve(admin, ln) }()
	}
	log.Info("fake TalkJS serving", "addr", o.addr, "admin_addr", o.adminAddr, "app_id", o.appID,
		"seed", o.seed, "down", o.faults.Down, "rate_limit", o.faults.RateLimit)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
	}
	stop()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil && runErr == nil {
			runErr = fmt.Errorf("shutdown: %w", err)
		}
	}
	st := fake.Stats()
	log.Info("stopped", "requests", st.Requests, "users", st.Users,
		"conversations", st.Conversations, "messages", st.Messages)
	return runErr
}

// checkHealth asks the admin API at the listen address addr, on loopback
// when addr names no host.
func checkHealth(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-health: %w", err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/_fake/stats", nil)
	if err != nil {
		return fmt.Errorf("-health: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("-health: %w", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("-health: /_fake/stats answered %s", resp.Status)
	}
	return nil
}

// serve runs srv on ln until Shutdown.
func serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// serveRefusingWhenDown serves the API on addr while the fake is up and
// closes the listening socket while it is down, so that new connections
// are refused as during a real outage (connections already open are
// closed by the fake's own Down handling). It returns when ctx ends.
func serveRefusingWhenDown(ctx context.Context, log *slog.Logger, srv *http.Server, addr string,
	fake *faketalkjs.Server, downChanged <-chan struct{}) error {
	var ln net.Listener
	served := make(chan error, 1)
	closeListener := func() {
		if ln != nil {
			_ = ln.Close()
			// Serve returns once its listener is closed; any other
			// error is the listener's own failure.
			if err := <-served; !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
				log.Warn("API listener failed", "addr", addr, "err", err)
			}
			ln = nil
		}
	}
	defer closeListener()
	for {
		down := fake.Faults().Down
		switch {
		case down && ln != nil:
			closeListener()
			log.Info("API listener closed: refusing connections", "addr", addr)
		case !down && ln == nil:
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			ln = l
			go func() { served <- srv.Serve(l) }()
			log.Info("API listener open", "addr", addr)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-downChanged:
		}
	}
}

// notifyOnWrite signals changed after every request that may change the
// faults.
func notifyOnWrite(h http.Handler, changed chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.Method != http.MethodGet {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	})
}
