package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestDescribeBuild(t *testing.T) {
	t.Parallel()
	vcs := func(rev, time, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: time}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "5568feb6a776771ef25eefbedaaa3119346676c1"
	tests := []struct {
		name     string
		override string
		info     *debug.BuildInfo
		want     buildInfo
	}{
		{"no build info", "", nil, buildInfo{Version: "devel"}},
		{"go run", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, buildInfo{Version: "devel"}},
		{"go install at a tag", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, buildInfo{Version: "v1.2.3"}},
		{"go build in a clone", "", &debug.BuildInfo{
			Main:     debug.Module{Version: "v0.0.0-20261125162724-5568feb6a776+dirty"},
			Settings: vcs(rev, "2026-11-25T16:27:24Z", "true")},
			buildInfo{Version: "v0.0.0-20261125162724-5568feb6a776+dirty", Revision: rev, Time: "2026-11-25T16:27:24Z", Modified: true}},
		{"revision without a module version", "", &debug.BuildInfo{
			Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "2026-11-25T16:27:24Z", "false")},
			buildInfo{Version: "devel-5568feb6a776", Revision: rev, Time: "2026-11-25T16:27:24Z"}},
		{"dirty revision without a module version", "", &debug.BuildInfo{
			Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "2026-11-25T16:27:24Z", "true")},
			buildInfo{Version: "devel-5568feb6a776+dirty", Revision: rev, Time: "2026-11-25T16:27:24Z", Modified: true}},
		{"link-time override wins", "v2.0.0", &debug.BuildInfo{
			Main: debug.Module{Version: "v1.2.3"}, Settings: vcs(rev, "2026-11-25T16:27:24Z", "false")},
			buildInfo{Version: "v2.0.0", Revision: rev, Time: "2026-11-25T16:27:24Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describeBuild(tt.override, tt.info)
			got.Go = ""
			if got != tt.want {
				t.Errorf("describeBuild = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// binaryVersion runs `outbox-relay version` and returns its first line.
func binaryVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), bin, "version").Output()
	if err != nil {
		t.Fatalf("%s version: %v", bin, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return first
}

// The built binary reports what the Go toolchain stamped into it, as
// `go version -m` reads it back.
func TestVersionIsTheStampedBuildInfo(t *testing.T) {
	t.Parallel()
	out, err := exec.CommandContext(t.Context(), "go", "version", "-m", binary).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	stamped := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "mod":
			stamped["mod"] = f[2]
		case len(f) >= 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs."):
			k, v, _ := strings.Cut(f[1], "=")
			stamped[k] = v
		}
	}
	info := &debug.BuildInfo{Main: debug.Module{Version: stamped["mod"]}}
	for _, k := range []string{"vcs.revision", "vcs.time", "vcs.modified"} {
		if v, ok := stamped[k]; ok {
			info.Settings = append(info.Settings, debug.BuildSetting{Key: k, Value: v})
		}
	}
	want := describeBuild("", info).Version
	if got := binaryVersion(t, binary); got != want {
		t.Fatalf("outbox-relay version = %q, want %q (go version -m: %v)", got, want, stamped)
	}
}

// -ldflags "-X main.version=..." overrides the build info.
func TestVersionOverriddenAtLinkTime(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "outbox-relay")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-ldflags", "-X main.version=v9.8.7-test", "-o", bin, ".")
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if got := binaryVersion(t, bin); got != "v9.8.7-test" {
		t.Fatalf("version = %q, want the link-time v9.8.7-test", got)
	}
}
