package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
)

// footprintResult is a relay process's resource use over one drain.
type footprintResult struct {
	cpu     time.Duration // user + system CPU of the relay process
	maxRSS  int64         // bytes: VmHWM when the drain ended
	n       int
	elapsed time.Duration
}

func (f footprintResult) cpuPer10k() float64 { return f.cpu.Seconds() * 10000 / float64(f.n) }

// buildRelayBinary builds cmd/outbox-relay from the main module.
func buildRelayBinary(ctx context.Context, srcRoot, dir string) (string, error) {
	bin := filepath.Join(dir, "outbox-relay")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/outbox-relay")
	cmd.Dir = srcRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/outbox-relay: %w: %s", err, out)
	}
	return bin, nil
}

// footprint drains n intents with the relay running as its own process and
// reads that process's rusage when it exits. For ours the process is the
// real outbox-relay binary; for the baselines it is this program in child
// mode, running the same code the in-process scenarios run.
func (e *env) footprint(ctx context.Context, spec systemSpec, relayBin string, n int) (footprintResult, error) {
	s, err := e.open(ctx, spec, 0)
	if err != nil {
		return footprintResult{}, err
	}
	defer s.close()
	if err := s.r.load(ctx, n, func(i int) outbox.Intent { return drainIntent(s.tag, i) }); err != nil {
		return footprintResult{}, fmt.Errorf("%s: load: %w", spec.label, err)
	}
	if err := s.prepareBacklog(ctx); err != nil {
		return footprintResult{}, err
	}
	e.resetFake(0)

	var cmd *exec.Cmd
	switch spec.template {
	case sysOurs:
		cmd = exec.CommandContext(ctx, relayBin, "run")
		cmd.Env = append(os.Environ(),
			"DATABASE_URL="+s.db.url,
			"TALKJS_APP_ID="+fakeAppID,
			"TALKJS_SECRET_KEY="+fakeSecret,
			"TALKJS_BASE_URL="+e.fakeURL,
			"OUTBOX_CONCURRENCY=100",
			"OUTBOX_BATCH_SIZE=100",
			// No rate limit, as the baselines have none: the adaptive
			// limit (the binary's default) would start from 20 requests/s
			// and claim to what that serves, measuring its ramp instead.
			"OUTBOX_RATE_ADAPTIVE=false",
			"OUTBOX_RATE_LIMIT=0",
			// The binary applies its own migrations, in case its source is
			// newer than the migrations this program was compiled with.
			"OUTBOX_MIGRATE=true",
			"OUTBOX_HTTP_ADDR=127.0.0.1:0",
			"OUTBOX_LOG_LEVEL=warn",
			// Must be shorter than OUTBOX_LEASE (10s); the default is 10s too.
			"TALKJS_TIMEOUT=5s",
		)
	default:
		self, err := os.Executable()
		if err != nil {
			return footprintResult{}, err
		}
		cmd = exec.CommandContext(ctx, self, "-child="+spec.template)
		cmd.Env = append(os.Environ(), "BENCH_CHILD_DB="+s.db.url, "BENCH_CHILD_FAKE="+e.fakeURL)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	runCtx, cancel := context.WithTimeout(ctx, 60*time.Second+time.Duration(n)*5*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return footprintResult{}, fmt.Errorf("%s: start child: %w", spec.label, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// kill ends the child and returns its exit status, which after a kill
	// says nothing: the callers report why they killed it instead.
	kill := func() error {
		_ = cmd.Process.Kill()
		return <-exited
	}
	// A child that exits early (bad configuration) ends the wait at once.
	waitCtx, cancelWait := context.WithCancelCause(runCtx)
	defer cancelWait(nil)
	go func() {
		select {
		case err := <-exited:
			exited <- err
			cancelWait(fmt.Errorf("child exited before the drain ended: %w", err))
		case <-waitCtx.Done():
		}
	}()
	if err := e.waitMessages(waitCtx, 2*n); err != nil {
		if cause := context.Cause(waitCtx); cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
			return footprintResult{}, fmt.Errorf("%s: %w", spec.label, cause)
		}
		_ = kill()
		return footprintResult{}, fmt.Errorf("%s: %w", spec.label, err)
	}
	cancelWait(nil)
	if err := s.waitDrained(runCtx); err != nil {
		_ = kill()
		return footprintResult{}, err
	}
	elapsed := time.Since(start)
	// VmHWM is the high-water mark of the child's own address space, which
	// exec made fresh. (ru_maxrss is not used: the child was started with
	// vfork, and Linux charges it the parent's RSS at that moment.)
	hwm, hwmErr := readVmHWM(cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			return footprintResult{}, fmt.Errorf("%s: child exited: %w", spec.label, err)
		}
	case <-time.After(30 * time.Second):
		_ = kill()
		return footprintResult{}, fmt.Errorf("%s: child did not stop within 30s of SIGTERM", spec.label)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return footprintResult{}, errors.New("no rusage for the child")
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if hwmErr != nil {
		return footprintResult{}, fmt.Errorf("%s: %w", spec.label, hwmErr)
	}
	if err := s.verify(ctx, n, 2*n); err != nil {
		return footprintResult{}, err
	}
	return footprintResult{cpu: cpu, maxRSS: hwm, n: n, elapsed: elapsed}, nil
}

// runChild is the child mode: run one baseline relay against the database
// and fake named in the environment until SIGTERM.
func runChild(kind string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dbURL, fakeURL := os.Getenv("BENCH_CHILD_DB"), os.Getenv("BENCH_CHILD_FAKE")
	if dbURL == "" || fakeURL == "" {
		return errors.New("child mode needs BENCH_CHILD_DB and BENCH_CHILD_FAKE")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool, err := relayPool(ctx, dbURL, dbPrefix+kind)
	if err != nil {
		return err
	}
	defer pool.Close()
	e := &env{fakeURL: fakeURL}
	client, err := talkjs.New(e.clientConfig(0))
	if err != nil {
		return err
	}
	defer client.Close()
	var spec systemSpec
	switch kind {
	case sysNaive:
		spec = naiveSpec(false)
	case sysRiver:
		spec = riverSpec(inFlight, riverFetchTune)
	default:
		return fmt.Errorf("unknown child kind %q", kind)
	}
	r, err := spec.make(pool, client, log)
	if err != nil {
		return err
	}
	if err := r.start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	r.stop()
	return nil
}

// readVmHWM returns a process's peak resident set size in bytes.
func readVmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read VmHWM: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
