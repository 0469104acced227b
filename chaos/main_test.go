package chaos_test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

const (
	appID  = "chaos-app"
	secret = "sk_test_chaos-SECRET-never-logged"
)

// sizes are the suite's parameters. Each has a reduced value (what `go test
// ./...` runs in CI) and a full value (CHAOS_FULL=1 or -chaos.full), and
// each can be set on its own with its variable or flag.
type sizes struct {
	full             bool
	crashIntents     int           // fault 1: intents delivered while relays are killed
	crashKills       int           // fault 1: SIGKILLs
	lease            time.Duration // faults 1 and 8: the relays' lease (crash takeover time)
	connKills        int           // fault 2: rounds of pg_terminate_backend
	connIntents      int           // fault 2
	dbDown           time.Duration // fault 3: how long the database stays down
	dbIntents        int           // fault 3
	outage           time.Duration // fault 4: API outage length
	outageIntents    int           // fault 4
	ambiguousIntents int           // fault 5
	rateIntents      int           // fault 6: per run (limit below, limit above)
	poisonIntents    int           // fault 7: good intents around the poison ones
	soakIntents      int           // fault 10
}

var params sizes

type param struct {
	name    string // flag is -chaos.<name>, variable CHAOS_<NAME>
	reduced string
	full    string
	set     func(string) error
	flagVal *string
}

func intParam(p *int) func(string) error {
	return func(s string) error {
		v, err := strconv.Atoi(s)
		if err == nil && v <= 0 {
			err = errors.New("must be positive")
		}
		*p = v
		return err
	}
}

func durParam(p *time.Duration) func(string) error {
	return func(s string) error {
		v, err := time.ParseDuration(s)
		if err == nil && v <= 0 {
			err = errors.New("must be positive")
		}
		*p = v
		return err
	}
}

var paramTable = []*param{
	{name: "crash-intents", reduced: "1200", full: "5000", set: intParam(&params.crashIntents)},
	{name: "kills", reduced: "6", full: "20", set: intParam(&params.crashKills)},
	{name: "lease", reduced: "2s", full: "10s", set: durParam(&params.lease)},
	{name: "conn-kills", reduced: "6", full: "20", set: intParam(&params.connKills)},
	{name: "conn-intents", reduced: "600", full: "5000", set: intParam(&params.connIntents)},
	{name: "db-down", reduced: "2s", full: "10s", set: durParam(&params.dbDown)},
	{name: "db-intents", reduced: "400", full: "5000", set: intParam(&params.dbIntents)},
	{name: "outage", reduced: "6s", full: "30s", set: durParam(&params.outage)},
	{name: "outage-intents", reduced: "400", full: "2000", set: intParam(&params.outageIntents)},
	{name: "ambiguous-intents", reduced: "400", full: "5000", set: intParam(&params.ambiguousIntents)},
	{name: "rate-intents", reduced: "240", full: "2000", set: intParam(&params.rateIntents)},
	{name: "poison-intents", reduced: "300", full: "3000", set: intParam(&params.poisonIntents)},
	{name: "soak-intents", reduced: "3000", full: "100000", set: intParam(&params.soakIntents)},
}

var fullFlag = flag.Bool("chaos.full", false, "run the chaos suite at full size (or set CHAOS_FULL=1)")

func init() {
	for _, p := range paramTable {
		p.flagVal = flag.String("chaos."+p.name, "", fmt.Sprintf("chaos parameter (reduced %s, full %s; or CHAOS_%s)",
			p.reduced, p.full, envName(p.name)))
	}
}

func envName(name string) string { return strings.ToUpper(strings.ReplaceAll(name, "-", "_")) }

// resolveParams fills params: flag, else variable, else the full or reduced
// default.
func resolveParams() error {
	full, _ := strconv.ParseBool(os.Getenv("CHAOS_FULL"))
	params.full = full || *fullFlag
	for _, p := range paramTable {
		v := p.reduced
		if params.full {
			v = p.full
		}
		if e := os.Getenv("CHAOS_" + envName(p.name)); e != "" {
			v = e
		}
		if *p.flagVal != "" {
			v = *p.flagVal
		}
		if err := p.set(v); err != nil {
			return fmt.Errorf("chaos parameter %s=%q: %w", p.name, v, err)
		}
	}
	return nil
}

// binary is the outbox-relay executable, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	if err := resolveParams(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bin, remove, err := relaytest.BuildRelay("../cmd/outbox-relay")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = bin
	code := pgtest.Run(m)
	remove()
	os.Exit(code)
}

// bench is one test's fixtures: a migrated database of its own and a fake
// TalkJS served over loopback HTTP by a server that can be closed and
// reopened on the same port.
type bench struct {
	pool  *pgxpool.Pool
	dbURL string
	fake  *faketalkjs.Server
	api   *apiServer
}

func setup(t *testing.T, faults faketalkjs.Faults) *bench {
	t.Helper()
	pool, dbURL := pgtest.NewPool(t)
	fake := faketalkjs.New(faketalkjs.Config{AppID: appID, SecretKey: secret, Faults: faults, Seed: 4})
	return &bench{pool: pool, dbURL: dbURL, fake: fake, api: serveAPI(t, fake)}
}

// apiServer serves a handler on a fixed loopback port. Close makes the port
// refuse connections (a real outage, not an answer); Reopen serves again.
type apiServer struct {
	handler http.Handler
	addr    string
	mu      sync.Mutex
	srv     *http.Server
}

func serveAPI(t *testing.T, h http.Handler) *apiServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &apiServer{handler: h, addr: ln.Addr().String()}
	s.serve(ln)
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) URL() string { return "http://" + s.addr }

func (s *apiServer) serve(ln net.Listener) {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// Close closes the listener and every connection.
func (s *apiServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		_ = s.srv.Close()
		s.srv = nil
	}
}

// Reopen serves again on the same address.
func (s *apiServer) Reopen(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatalf("reopen %s: %v", s.addr, err)
	}
	s.serve(ln)
}

// client returns a TalkJS client for the bench's fake.
func (b *bench) client(t *testing.T, timeout time.Duration) *talkjs.Client {
	t.Helper()
	c, err := talkjs.New(talkjs.Config{AppID: appID, SecretKey: secret, BaseURL: b.api.URL(), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// inProcess is a relay running inside the test process, with its metrics.
type inProcess struct {
	*relay.Relay
	reg *prometheus.Registry
}

// metric returns the sum of every series of the named metric.
func (r *inProcess) metric(t *testing.T, name string) float64 {
	t.Helper()
	v, _ := relaytest.Metric(t, r.reg, name)
	return v
}

// startRelay starts an in-process relay on pool, stopped when the test ends.
func (b *bench) startRelay(t *testing.T, pool *pgxpool.Pool, cfg relay.Config, timeout time.Duration) *inProcess {
	t.Helper()
	if pool == nil {
		pool = b.pool
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	r, err := relay.New(pool, b.client(t, timeout), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return &inProcess{Relay: r, reg: reg}
}

// fastRetry is a relay config with test-sized backoff.
func fastRetry(name string) relay.Config {
	return relay.Config{Name: name, Retry: relay.RetryPolicy{Base: 50 * time.Millisecond, Max: time.Second}}
}

// proc is an `outbox-relay run` child process.
type proc struct {
	name     string
	cmd      *exec.Cmd
	httpAddr string
	logPath  string
	exited   chan struct{}   // closed when the process has exited
	ctx      context.Context // the test's: its requests end with the test
}

// relayEnv is the environment of a relay process on the bench.
func (b *bench) relayEnv(extra ...string) []string {
	env := []string{"DATABASE_URL=" + b.dbURL, "TALKJS_APP_ID=" + appID, "TALKJS_SECRET_KEY=" + secret,
		"TALKJS_BASE_URL=" + b.api.URL(), "OUTBOX_MIGRATE=false", "OUTBOX_RATE_LIMIT=0",
		"OUTBOX_RETRY_BASE=50ms", "OUTBOX_RETRY_MAX=1s", "OUTBOX_LOG_LEVEL=warn"}
	return append(env, extra...)
}

// startProc runs `outbox-relay run` as a child process named name, with its
// metrics and health served on a free loopback port. The process is killed
// when the test ends; its log is printed if the test failed.
func startProc(t *testing.T, name string, env []string) *proc {
	t.Helper()
	addr := freeAddr(t)
	// Killed when the test ends, as the cleanup below does anyway.
	cmd := exec.CommandContext(t.Context(), binary, "run")
	cmd.Env = append(append(os.Environ(), env...), "OUTBOX_RELAY_NAME="+name, "OUTBOX_HTTP_ADDR="+addr)
	logs, err := os.Create(filepath.Join(t.TempDir(), "relay.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, httpAddr: addr, logPath: logs.Name(), exited: make(chan struct{}), ctx: t.Context()}
	go func() {
		_ = cmd.Wait()
		_ = logs.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("relay %s log (last 4 KiB):\n%s", name, tail(b, 4096))
		}
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// kill SIGKILLs the process and waits for it to exit.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// metrics returns the process's /metrics text, or "" when it does not answer.
func (p *proc) metrics() string {
	resp, err := httpGet(p.ctx, "http://"+p.httpAddr+"/metrics")
	if err != nil {
		return ""
	}
	return resp
}

// metric reads one metric (summed over its series) from the process, and
// whether it served it.
func (p *proc) metric(t *testing.T, name string) (float64, bool) {
	t.Helper()
	return relaytest.Metric(t, relaytest.TextGatherer(p.metrics()), name)
}

// readyStatus returns the HTTP status of /readyz, 0 when it does not answer.
func (p *proc) readyStatus() int {
	ctx, cancel := context.WithTimeout(p.ctx, httpGetTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAddr+"/readyz", nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// rssKiB returns the resident set size of the process (VmRSS).
func (p *proc) rssKiB(t *testing.T) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read RSS of %s: %v", p.name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatalf("parse VmRSS %q: %v", rest, err)
			}
			return kb
		}
	}
	t.Fatalf("no VmRSS for %s", p.name)
	return 0
}

// sockets counts the process's open sockets (database and HTTP connections).
func (p *proc) sockets() int {
	dir := fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(link, "socket:") {
			n++
		}
	}
	return n
}

// httpGetTimeout bounds one request to a relay process, body included.
const httpGetTimeout = 2 * time.Second

func httpGet(ctx context.Context, u string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, httpGetTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var sb strings.Builder
	_, err = bufio.NewReader(resp.Body).WriteTo(&sb)
	return sb.String(), err
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// orderIntents returns n typical intents spread over convs conversations,
// so each conversation has several intents whose order matters.
func orderIntents(prefix string, n, convs int) []outbox.Intent {
	out := make([]outbox.Intent, n)
	for i := range n {
		out[i] = relaytest.OrderIntent(fmt.Sprintf("%s-%d", prefix, i%convs), i)
	}
	return out
}

// insertChunks inserts intents with plain SQL, chunk per transaction.
func insertChunks(t *testing.T, pool *pgxpool.Pool, intents []outbox.Intent, chunk int) []int64 {
	t.Helper()
	var ids []int64
	for lo := 0; lo < len(intents); lo += chunk {
		ids = append(ids, relaytest.InsertSQL(t, pool, intents[lo:min(lo+chunk, len(intents))])...)
	}
	return ids
}

// counts returns intents by state, failing the test on a database error.
func counts(t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	return relaytest.Counts(t, pool)
}

// countDone returns the number of done intents, -1 on a database error
// (for polling while the database may be unreachable).
func countDone(pool *pgxpool.Pool) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE state = 'done'`).Scan(&n); err != nil {
		return -1
	}
	return n
}

func queryInt(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", strings.Join(strings.Fields(sql), " "), err)
	}
	return n
}

// lostAndDuplicated compares the fake's messages with what the intents
// describe: expected messages missing (lost) and stored more than once
// (duplicates). relaytest.CheckDelivered then checks order and content.
func lostAndDuplicated(fake *faketalkjs.Server, intents []outbox.Intent) (lost, dup int) {
	want := map[[2]string]int{}
	for _, in := range intents {
		for _, m := range in.Messages {
			want[[2]string{in.Conversation.ID, m.Text}]++
		}
	}
	got := map[[2]string]int{}
	for _, m := range fake.AllMessages() {
		got[[2]string{m.ConversationID, m.Text}]++
	}
	for k, w := range want {
		if g := got[k]; g < w {
			lost += w - g
		} else {
			dup += g - w
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			dup += g
		}
	}
	return lost, dup
}

// checkExactlyOnce asserts every intent is done and its messages arrived
// once, in order, and reports the figures.
func checkExactlyOnce(t *testing.T, b *bench, intents []outbox.Intent) (lost, dup int) {
	t.Helper()
	c := counts(t, b.pool)
	if c["done"] != len(intents) {
		t.Errorf("states = %v, want all %d done", c, len(intents))
	}
	lost, dup = lostAndDuplicated(b.fake, intents)
	if lost != 0 || dup != 0 {
		t.Errorf("%d messages lost, %d duplicated; want 0 and 0", lost, dup)
	}
	relaytest.CheckDelivered(t, b.fake, intents)
	return lost, dup
}

// waitUntil polls cond every 20ms until it holds, failing the test once
// timeout has passed, and returns how long it took.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return relaytest.WaitFor(t, timeout, what, cond)
}

// withAppName returns dbURL with application_name set, so the test can
// find the relay's connections in pg_stat_activity.
func withAppName(t *testing.T, dbURL, name string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// tableExists reports whether a relation exists.
func tableExists(t *testing.T, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(t.Context(), `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}
