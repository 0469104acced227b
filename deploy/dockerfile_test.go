package deploy

import (
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// repoRoot is where the Dockerfile and docker-compose.yml live.
const repoRoot = ".."

// instruction is one Dockerfile line, continuations joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is one FROM and what follows it.
type stage struct {
	from, name   string
	instructions []instruction
}

func (s stage) all(cmd string) []string {
	var out []string
	for _, in := range s.instructions {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

func parseDockerfile(t *testing.T) (args map[string]string, stages []stage) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	args = map[string]string{}
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if rest, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(trimmed)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	for _, l := range logical {
		cmd, rest, _ := strings.Cut(l, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(rest)}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
		case len(stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		case len(stages) > 0:
			stages[len(stages)-1].instructions = append(stages[len(stages)-1].instructions, in)
		}
	}
	return args, stages
}

// The image is built from source in the official Go image, as a static
// binary, into a small final stage that runs unprivileged, checks its own
// health with the binary and starts outbox-relay.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	args, stages := parseDockerfile(t)
	byName := map[string]stage{}
	for _, s := range stages {
		byName[s.name] = s
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}

	build, ok := byName["build"]
	if !ok || !strings.HasPrefix(build.from, "golang:") {
		t.Fatalf("no build stage FROM the official golang image: %+v", stages)
	}
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}
	if args["GO_VERSION"] != string(goLine[1]) {
		t.Errorf("ARG GO_VERSION=%s, want go.mod's %s", args["GO_VERSION"], goLine[1])
	}
	if build.from != "golang:${GO_VERSION}-bookworm" {
		t.Errorf("build stage FROM %s, want golang:${GO_VERSION}-bookworm", build.from)
	}
	env := strings.Join(build.all("ENV"), " ")
	if !strings.Contains(env, "CGO_ENABLED=0") {
		t.Errorf("build stage ENV %q, want CGO_ENABLED=0 (a static binary)", env)
	}
	var built, cached bool
	for _, run := range build.all("RUN") {
		if strings.Contains(run, "--mount=type=cache,target=/go/pkg/mod") {
			cached = true
		}
		if strings.Contains(run, "go build") && strings.Contains(run, "-trimpath") &&
			strings.Contains(run, "./cmd/outbox-relay") && strings.Contains(run, "-X main.version=${VERSION}") {
			built = true
		}
	}
	if !cached || !built {
		t.Errorf("build stage: module cache mounted %t, go build -trimpath of ./cmd/outbox-relay with the version %t", cached, built)
	}

	final := stages[len(stages)-1]
	if final.name != "relay" || final.from != "scratch" {
		t.Errorf("final stage %q FROM %s, want relay FROM scratch", final.name, final.from)
	}
	for _, name := range []string{"relay", "fake-talkjs"} {
		s := byName[name]
		users := s.all("USER")
		if len(users) == 0 {
			t.Errorf("stage %s has no USER: it would run as root", name)
			continue
		}
		if u := users[len(users)-1]; u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root") {
			t.Errorf("stage %s runs as %s, want an unprivileged user", name, u)
		}
	}
	want := map[string]string{
		"ENTRYPOINT": `["/usr/local/bin/outbox-relay"]`,
		"CMD":        `["run"]`,
		"ENV":        "OUTBOX_HTTP_ADDR=:9090",
	}
	for cmd, v := range want {
		if got := final.all(cmd); len(got) != 1 || got[0] != v {
			t.Errorf("relay stage %s %q, want %s", cmd, got, v)
		}
	}
	hc := final.all("HEALTHCHECK")
	if len(hc) != 1 || !strings.HasSuffix(hc[0], `CMD ["/usr/local/bin/outbox-relay", "health"]`) {
		t.Errorf("relay stage HEALTHCHECK %q, want one running outbox-relay health", hc)
	}
	for _, s := range stages {
		for _, c := range s.all("COPY") {
			if strings.Contains(c, "dist/") {
				t.Errorf("stage %s copies host-built binaries: COPY %s", s.name, c)
			}
		}
	}
}

// The build context that .dockerignore admits is enough to build both
// binaries the way the Dockerfile does: copy exactly those files and build.
func TestDockerBuildContextBuilds(t *testing.T) {
	t.Parallel()
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	_ = f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := t.TempDir()
	var copied int
	err = filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		if rel == "." {
			return nil
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		excluded, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil || excluded {
			return err
		}
		copied++
		return copyFile(path, filepath.Join(ctxDir, rel))
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, leaked := range []string{".env", ".git", "dist", "bench", "README.md"} {
		if _, err := os.Stat(filepath.Join(ctxDir, leaked)); err == nil {
			t.Errorf(".dockerignore admits %s", leaked)
		}
	}
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-buildvcs=false", "-o", t.TempDir()+"/", "./cmd/outbox-relay", "./cmd/fake-talkjs")
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build in the %d-file build context: %v\n%s", copied, err, out)
	}
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
