// Package pgcluster finds a reachable Postgres server, or starts a throwaway
// cluster with initdb and pg_ctl. The demo uses it when no server is running,
// and tests use it both to make sure a server is up and to get a private
// cluster they may stop and restart.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultURL is the local server the project expects on a development machine.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Ping reports whether a server accepts connections at url within timeout.
func Ping(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// StartLocalService tries to start the machine's packaged cluster (Debian's
// pg_ctlcluster) and waits for url to answer. It is a no-op error when the
// tools are not installed.
func StartLocalService(ctx context.Context, url string) error {
	versions, _ := filepath.Glob("/etc/postgresql/*")
	if len(versions) == 0 {
		return errors.New("no packaged cluster under /etc/postgresql")
	}
	sort.Strings(versions)
	version := filepath.Base(versions[len(versions)-1])
	out, err := exec.CommandContext(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start").CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("already running")) {
		return fmt.Errorf("pg_ctlcluster %s main start: %w: %s", version, err, bytes.TrimSpace(out))
	}
	return waitReady(ctx, url, 30*time.Second)
}

// Cluster is a throwaway Postgres cluster in a temporary directory, listening
// on 127.0.0.1 at a free port with trust authentication.
type Cluster struct {
	// Dir holds the data directory and the socket.
	Dir  string
	Port int

	bin  string
	cred *syscall.Credential
}

// Binaries returns the directory holding initdb and pg_ctl: from PATH, or
// the newest /usr/lib/postgresql/*/bin.
func Binaries() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			real, err := filepath.EvalSymlinks(p)
			if err == nil {
				p = real
			}
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("initdb and pg_ctl not found: install PostgreSQL server binaries (Debian: apt-get install postgresql)")
}

// Start creates and starts a new cluster. Stop it with Remove.
func Start(ctx context.Context) (*Cluster, error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "outbox-relay-pg-")
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	c := &Cluster{Dir: dir, bin: bin}
	// initdb refuses to run as root: run the server tools as postgres.
	if os.Geteuid() == 0 {
		if c.cred, err = postgresCredential(); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("start cluster: %w", err)
		}
	}
	if c.Port, err = freePort(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := c.run(ctx, "initdb", "-D", c.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := c.StartServer(ctx); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// URL returns a connection string for database db on the cluster.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// StartServer starts the server (again) and waits until it accepts connections.
func (c *Cluster) StartServer(ctx context.Context) error {
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
		c.Port, c.Dir)
	if err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-l", filepath.Join(c.Dir, "server.log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		return err
	}
	return waitReady(ctx, c.URL("postgres"), 30*time.Second)
}

// StopServer stops the server with the given pg_ctl mode ("fast" or "immediate").
func (c *Cluster) StopServer(ctx context.Context, mode string) error {
	return c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-m", mode, "-w", "-t", "60", "stop")
}

// Remove stops the server if it runs and deletes the cluster's files.
func (c *Cluster) Remove() error {
	_ = c.StopServer(context.Background(), "immediate")
	return os.RemoveAll(c.Dir)
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

func (c *Cluster) run(ctx context.Context, tool string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, tool), args...)
	cmd.Dir = c.Dir
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// Keep the server out of the caller's process group, so a Ctrl-C sent
	// to the caller's terminal does not kill it before Remove can.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", tool, err, bytes.TrimSpace(out))
	}
	return nil
}

func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root and no postgres user to run initdb as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitReady(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := Ping(ctx, url, 2*time.Second)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Redact returns a connection URL with its password hidden, for messages.
func Redact(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable url)"
	}
	return parsed.Redacted()
}
