package main

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// readmeTable returns the rows of the README table whose header row is
// header, as cells without the surrounding spaces.
func readmeTable(t *testing.T, header string) [][]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	start := slices.Index(lines, header)
	if start < 0 {
		t.Fatalf("README.md has no table headed %q", header)
	}
	var rows [][]string
	for _, line := range lines[start+2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	return rows
}

// The configuration table in README.md lists exactly the variables the
// daemon reads, each with its default as the code has it.
func TestReadmeConfigTable(t *testing.T) {
	t.Parallel()
	documented := map[string]string{}
	for _, row := range readmeTable(t, "| variable | meaning | default |") {
		name := strings.Trim(row[0], "`")
		if _, dup := documented[name]; dup {
			t.Errorf("README documents %s twice", name)
		}
		documented[name] = row[len(row)-1]
	}
	typ := reflect.TypeFor[runConfig]()
	for i := range typ.NumField() {
		tag := typ.Field(i).Tag.Get("env")
		if tag == "" {
			continue
		}
		parts := strings.Split(tag, ",")
		name := strings.TrimSpace(parts[0])
		got, ok := documented[name]
		if !ok {
			t.Errorf("%s is read by the daemon but missing from the README's table", name)
			continue
		}
		delete(documented, name)
		var want string
		if d, ok := envDefaults()[name]; ok {
			want = "`" + d + "`"
		}
		for _, opt := range parts[1:] {
			opt = strings.TrimSpace(opt)
			if opt == "required" {
				want = "required"
			} else if d, ok := strings.CutPrefix(opt, "default="); ok {
				want = "`" + d + "`"
			}
		}
		switch {
		case want != "" && got != want:
			t.Errorf("README gives %s the default %s, the code %s", name, got, want)
		case want == "" && (got == "" || got == "required"):
			// No default in the tag: computed at start; the README must say what it is.
			t.Errorf("README gives %s the default %q, want a description of the computed default", name, got)
		}
	}
	for name := range documented {
		t.Errorf("README documents %s, which the daemon does not read", name)
	}
}

// The CLI table in README.md names every command of the usage text.
func TestReadmeCLITable(t *testing.T) {
	t.Parallel()
	var rows []string
	for _, row := range readmeTable(t, "| command | does |") {
		rows = append(rows, row[0])
	}
	_, commands, ok := strings.Cut(usage, "Commands:\n")
	if !ok {
		t.Fatal("usage has no Commands: section")
	}
	commands, _, _ = strings.Cut(commands, "\n\n")
	for _, m := range regexp.MustCompile(`(?m)^  (\w+) `).FindAllStringSubmatch(commands, -1) {
		// A row may name two commands: "`outbox-relay pause` / `resume`".
		names := func(r string) bool {
			return strings.Contains(r, "`outbox-relay "+m[1]) || strings.Contains(r, "/ `"+m[1]+"`")
		}
		if !slices.ContainsFunc(rows, names) {
			t.Errorf("README's command table has no row for %s", m[1])
		}
	}
}
