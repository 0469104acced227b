package main

import (
	"fmt"
	"io"
	"strings"
)

// verdict says whether a target was met.
type verdict int

const (
	verdictNone    verdict = iota // no target
	verdictYes                    // met
	verdictNo                     // not met
	verdictUnknown                // a figure is missing
)

func (v verdict) String() string {
	switch v {
	case verdictYes:
		return "yes"
	case verdictNo:
		return "**no**"
	case verdictUnknown:
		return "n/a"
	default:
		return ""
	}
}

// judge is the verdict of cond, or unknown when the figure was not measured.
func judge(measured, cond bool) verdict {
	switch {
	case !measured:
		return verdictUnknown
	case cond:
		return verdictYes
	default:
		return verdictNo
	}
}

// row is one line of the results table.
type row struct {
	scenario           string
	ours, naive, river float64
	unit               string // fmt verb for the figures
	oursOnly           bool
	lowerBetter        bool // ratios still read ours ÷ baseline
	target             string
	met                verdict
	note               string
	// measured, when set, says which of ours, naive and River were
	// measured, so that a 0 is printed as a figure; unset, 0 means not
	// measured.
	measured *[3]bool
}

type report struct {
	rows   []row
	errors []string
}

func (r *report) add(x row) { r.rows = append(r.rows, x) }

func (r *report) write(w io.Writer) {
	fmt.Fprintln(w, "| scenario | ours | naive | River | ours/naive | ours/River | target | met? |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|---|")
	for _, x := range r.rows {
		fig := func(v float64, i int) string {
			if (x.measured == nil && v == 0) || (x.measured != nil && !x.measured[i]) {
				return "–"
			}
			return fmt.Sprintf(x.unit, v)
		}
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f×", a/b)
		}
		naive, river, rn, rr := fig(x.naive, 1), fig(x.river, 2), ratio(x.ours, x.naive), ratio(x.ours, x.river)
		if x.oursOnly {
			naive, river, rn, rr = "", "", "", ""
		}
		scenario := x.scenario
		if x.note != "" {
			scenario += " <br>*" + x.note + "*"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			esc(scenario), fig(x.ours, 0), naive, river, rn, rr, esc(x.target), x.met)
	}
	if len(r.errors) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Errors (figures marked – were not measured):")
		for _, e := range r.errors {
			fmt.Fprintf(w, "- %s\n", e)
		}
	}
}

func esc(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
