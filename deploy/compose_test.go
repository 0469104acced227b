package deploy

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// service is the part of a Compose service the tests look at.
type service struct {
	Image           string
	Build           struct{ Context, Target string }
	Command         []string
	Profiles        []string
	Environment     map[string]string
	DependsOn       map[string]struct{ Condition string } `yaml:"depends_on"`
	Healthcheck     struct{ Test []string }
	StopGracePeriod string `yaml:"stop_grace_period"`
	Volumes         []string
}

// interpolate resolves ${VAR}, ${VAR:-default} and $$ as Compose does,
// with env standing for the shell and the .env file.
func interpolate(s string, env map[string]string) string {
	re := regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}`)
	return re.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := re.FindStringSubmatch(m)
		if v := env[sub[1]]; v != "" {
			return v
		}
		return sub[2]
	})
}

// loadCompose reads docker-compose.yml (YAML anchors and merge keys
// resolved) and interpolates every value with env.
func loadCompose(t *testing.T, env map[string]string) map[string]service {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct{ Services map[string]service }
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	for name, s := range file.Services {
		for k, v := range s.Environment {
			s.Environment[k] = interpolate(v, env)
		}
		for i, c := range s.Command {
			s.Command[i] = interpolate(c, env)
		}
		file.Services[name] = s
	}
	return file.Services
}

// readEnvFile reads KEY=VALUE lines as Compose reads .env.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=VALUE", path, line)
		}
		env[k] = v
	}
	return env
}

// active lists the services `docker compose up` starts with profiles.
func active(services map[string]service, profiles ...string) []string {
	var out []string
	for name, s := range services {
		if len(s.Profiles) == 0 || slices.ContainsFunc(s.Profiles, func(p string) bool { return slices.Contains(profiles, p) }) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Plain `up` with .env made from .env.example runs relays against the
// real TalkJS with the credentials from .env; `--profile dev up` runs the
// fake and relays pointed at it. Every relay runs as its own role with
// migrations off, an explicit listen address, a health check by the binary,
// a grace period above its shutdown timeout, and starts after Postgres is
// healthy and the setup has migrated and granted.
func TestComposeServices(t *testing.T) {
	t.Parallel()
	dotEnv := readEnvFile(t, filepath.Join(repoRoot, ".env.example"))
	dotEnv["TALKJS_APP_ID"], dotEnv["TALKJS_SECRET_KEY"] = "my-app", "sk_live_from_dotenv"
	withEnv := loadCompose(t, dotEnv)
	noEnv := loadCompose(t, nil)

	profiles := strings.Split(dotEnv["COMPOSE_PROFILES"], ",")
	if got, want := active(withEnv, profiles...), []string{"postgres", "relay-1", "relay-2", "setup"}; !slices.Equal(got, want) {
		t.Errorf("plain up with .env from .env.example starts %v, want %v", got, want)
	}
	if got, want := active(noEnv, "dev"), []string{"dev-relay-1", "dev-relay-2", "fake-talkjs", "postgres", "setup"}; !slices.Equal(got, want) {
		t.Errorf("up --profile dev starts %v, want %v", got, want)
	}

	pg := withEnv["postgres"]
	if !strings.HasPrefix(pg.Image, "postgres:") {
		t.Errorf("postgres image %q, want the official postgres image", pg.Image)
	}
	if !slices.Contains(pg.Healthcheck.Test, "pg_isready") {
		t.Errorf("postgres healthcheck %q, want pg_isready", pg.Healthcheck.Test)
	}
	if !slices.Contains(pg.Volumes, "pgdata:/var/lib/postgresql/data") || !slices.Contains(pg.Volumes, "./deploy/compose/initdb:/docker-entrypoint-initdb.d:ro") {
		t.Errorf("postgres volumes %q, want the data volume and the role init scripts", pg.Volumes)
	}

	setup := withEnv["setup"]
	if setup.Build.Target != "setup" || setup.DependsOn["postgres"].Condition != "service_healthy" {
		t.Errorf("setup: target %q, depends on %+v", setup.Build.Target, setup.DependsOn)
	}
	script := strings.Join(setup.Command, "\n")
	for _, step := range []string{"outbox-relay migrate", `outbox-relay grant producer "$APP_DB_USER"`,
		`outbox-relay grant relay "$RELAY_DB_USER"`, `outbox-relay grant auditor "$AUDITOR_DB_USER"`} {
		if !strings.Contains(script, step) {
			t.Errorf("setup script lacks %q:\n%s", step, script)
		}
	}

	fake := noEnv["fake-talkjs"]
	if !slices.Equal(fake.Profiles, []string{"dev"}) || !slices.Contains(fake.Healthcheck.Test, "-health") {
		t.Errorf("fake-talkjs: profiles %q, healthcheck %q", fake.Profiles, fake.Healthcheck.Test)
	}

	relays := map[string]service{
		"relay-1": withEnv["relay-1"], "relay-2": withEnv["relay-2"],
		"dev-relay-1": noEnv["dev-relay-1"], "dev-relay-2": noEnv["dev-relay-2"],
	}
	names := map[string]bool{}
	for name, r := range relays {
		env := r.Environment
		if r.Build.Target != "relay" || !slices.Equal(r.Command, []string{"run"}) {
			t.Errorf("%s: target %q command %q, want the relay image running run", name, r.Build.Target, r.Command)
		}
		if !slices.Equal(r.Healthcheck.Test, []string{"CMD", "/usr/local/bin/outbox-relay", "health"}) {
			t.Errorf("%s healthcheck %q, want outbox-relay health", name, r.Healthcheck.Test)
		}
		if env["OUTBOX_MIGRATE"] != "false" {
			t.Errorf("%s OUTBOX_MIGRATE=%q, want false (the setup service migrates)", name, env["OUTBOX_MIGRATE"])
		}
		if _, port, err := net.SplitHostPort(env["OUTBOX_HTTP_ADDR"]); err != nil || port == "0" {
			t.Errorf("%s OUTBOX_HTTP_ADDR=%q, want an explicit port", name, env["OUTBOX_HTTP_ADDR"])
		}
		if !strings.HasPrefix(env["DATABASE_URL"], "postgres://relay:") {
			t.Errorf("%s DATABASE_URL=%q, want the relay role", name, env["DATABASE_URL"])
		}
		grace, err1 := time.ParseDuration(r.StopGracePeriod)
		shutdown, err2 := time.ParseDuration(env["OUTBOX_SHUTDOWN_TIMEOUT"])
		if err1 != nil || err2 != nil || grace <= shutdown {
			t.Errorf("%s stop_grace_period %q, OUTBOX_SHUTDOWN_TIMEOUT %q: want the grace period longer", name, r.StopGracePeriod, env["OUTBOX_SHUTDOWN_TIMEOUT"])
		}
		if r.DependsOn["postgres"].Condition != "service_healthy" || r.DependsOn["setup"].Condition != "service_completed_successfully" {
			t.Errorf("%s depends on %+v, want postgres healthy and setup completed", name, r.DependsOn)
		}
		if names[env["OUTBOX_RELAY_NAME"]] {
			t.Errorf("%s: relay name %q used twice", name, env["OUTBOX_RELAY_NAME"])
		}
		names[env["OUTBOX_RELAY_NAME"]] = true
		if strings.HasPrefix(name, "dev-") {
			if env["TALKJS_BASE_URL"] != "http://fake-talkjs:8090" || env["TALKJS_APP_ID"] != fake.Environment["TALKJS_APP_ID"] ||
				env["TALKJS_SECRET_KEY"] != fake.Environment["TALKJS_SECRET_KEY"] || r.DependsOn["fake-talkjs"].Condition != "service_healthy" {
				t.Errorf("%s does not target the healthy fake with its credentials: %v %+v", name, env, r.DependsOn)
			}
		} else if env["TALKJS_BASE_URL"] != "https://api.talkjs.com" || env["TALKJS_APP_ID"] != "my-app" || env["TALKJS_SECRET_KEY"] != "sk_live_from_dotenv" {
			t.Errorf("%s does not target TalkJS with the .env credentials: %v", name, env)
		}
	}

	ignored, err := os.ReadFile(filepath.Join(repoRoot, ".gitignore"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(ignored), "\n"), ".env") {
		t.Error(".gitignore does not ignore .env")
	}
}
