package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// appName is the application_name of a system's relay sessions.
func appName(spec systemSpec) string { return dbPrefix + spec.template }

// clockTicks is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on Linux).
const clockTicks = 100

// backendCPU reads the CPU time (user + system, in clock ticks) of every
// Postgres backend connected to database db with application_name app,
// by pid, from /proc/<pid>/stat. The server must run on this machine.
func (e *env) backendCPU(ctx context.Context, db, app string) (map[int]int64, error) {
	rows, err := e.admin.Query(ctx, `
SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`, db, app)
	if err != nil {
		return nil, fmt.Errorf("backends of %s: %w", app, err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("backends of %s: %w", app, err)
	}
	cpu := make(map[int]int64, len(pids))
	for _, pid := range pids {
		t, err := procCPU(int(pid))
		if err != nil {
			return nil, err
		}
		cpu[int(pid)] = t
	}
	return cpu, nil
}

// procCPU is a process's utime + stime in clock ticks.
func procCPU(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("backend cpu (is Postgres on this machine?): %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	stime, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return utime + stime, nil
}

// cpuSince is the CPU seconds the backends of after used since before: a
// backend absent from before started since, and all its time counts.
// A backend that ended between the two samples is not counted.
func cpuSince(before, after map[int]int64) float64 {
	var ticks int64
	for pid, t := range after {
		ticks += t - before[pid]
	}
	return float64(ticks) / clockTicks
}
