package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version overrides what the build info says when set at link time:
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/outbox-relay
//
// Left empty, the version comes from runtime/debug.ReadBuildInfo.
var version string

// buildInfo is what the binary knows about its own build.
type buildInfo struct {
	Version  string // as recorded in outbox.relays
	Revision string // VCS revision, "" when not stamped
	Time     string // VCS commit time (RFC 3339), "" when not stamped
	Modified bool   // the work tree had uncommitted changes
	Go       string // toolchain, e.g. go1.26.8
}

// readBuildInfo describes this binary.
func readBuildInfo() buildInfo {
	info, _ := debug.ReadBuildInfo()
	return describeBuild(version, info)
}

// describeBuild turns the link-time override and the build info into one
// version string. `go build` in a clone stamps the module version from VCS
// (e.g. v0.0.0-20261125162724-5568feb6a776+dirty); `go install
// module@v1.2.3` stamps the tag; a build without VCS information (go run,
// a source archive, -buildvcs=false) is "devel", with the revision when
// known.
func describeBuild(override string, info *debug.BuildInfo) buildInfo {
	b := buildInfo{Version: "devel", Go: runtime.Version()}
	if info != nil {
		if info.GoVersion != "" {
			b.Go = info.GoVersion
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
		if v := info.Main.Version; v != "" && v != "(devel)" {
			b.Version = v
		} else if b.Revision != "" {
			b.Version = "devel-" + shortRevision(b.Revision)
			if b.Modified {
				b.Version += "+dirty"
			}
		}
	}
	if override != "" {
		b.Version = override
	}
	return b
}

func shortRevision(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// print writes the version on the first line (what scripts read), then
// what else is known about the build.
func (b buildInfo) print(w io.Writer) {
	fmt.Fprintln(w, b.Version)
	if b.Revision != "" {
		fmt.Fprintf(w, "revision  %s\n", b.Revision)
	}
	if b.Time != "" {
		fmt.Fprintf(w, "time      %s\n", b.Time)
	}
	if b.Revision != "" {
		fmt.Fprintf(w, "modified  %t\n", b.Modified)
	}
	fmt.Fprintf(w, "go        %s %s/%s\n", b.Go, runtime.GOOS, runtime.GOARCH)
}
