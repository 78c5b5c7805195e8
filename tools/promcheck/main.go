// promcheck: the checks of `promtool check rules` and `promtool check metrics`, from the
// libraries Prometheus itself uses for them, without building Prometheus' command-line tool
// (tools/promcheck/promcheck.sh builds this one).
//
//	promcheck rules FILE...   parse Prometheus rule files (rulefmt: the groups' structure, every
//	                          expr through the PromQL parser, the annotation templates); exit 1
//	                          with one line per error
//	promcheck metrics         lint a text exposition read on stdin (promlint: names, units,
//	                          suffixes, help); exit 1 with one line per problem
//
// Exit 2 on a usage error.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

const usage = "usage: promcheck rules FILE... | promcheck metrics <EXPOSITION"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	switch cmd, args := os.Args[1], os.Args[2:]; {
	case cmd == "rules" && len(args) > 0:
		os.Exit(checkRules(args, os.Stdout))
	case cmd == "metrics" && len(args) == 0:
		os.Exit(checkMetrics(os.Stdin, os.Stdout))
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
}

// checkRules parses each file as promtool does: unknown fields are errors, names follow the
// legacy (pre-UTF-8) scheme our metrics use, and the default PromQL function set only.
func checkRules(files []string, out io.Writer) int {
	p := parser.NewParser(parser.Options{})
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	failed := 0
	for _, f := range files {
		groups, errs := rulefmt.ParseFile(f, false, model.LegacyValidation, p, logger)
		if len(errs) > 0 {
			failed++
			for _, err := range errs {
				fmt.Fprintln(out, err) // ParseFile names the file and line
			}
			continue
		}
		rules := 0
		for _, g := range groups.Groups {
			rules += len(g.Rules)
			// Two rules of one group with the same name and labels overwrite each other's
			// series (promtool's "duplicate-rules" lint); a warning, as there.
			seen := map[string]bool{}
			for _, r := range g.Rules {
				if r.Record == "" {
					continue
				}
				key := r.Record + fmt.Sprint(r.Labels)
				if seen[key] {
					fmt.Fprintf(out, "%s: warning: group %q: recording rule %q is repeated with the same labels\n", f, g.Name, r.Record)
				}
				seen[key] = true
			}
		}
		fmt.Fprintf(out, "%s: %d group(s), %d rule(s): ok\n", f, len(groups.Groups), rules)
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// checkMetrics lints one text exposition; a parse error counts as a problem.
func checkMetrics(in io.Reader, out io.Writer) int {
	problems, err := promlint.New(in).Lint()
	if err != nil {
		fmt.Fprintf(out, "cannot parse the exposition: %v\n", err)
		return 1
	}
	for _, p := range problems {
		fmt.Fprintf(out, "%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		return 1
	}
	fmt.Fprintln(out, "metrics: ok")
	return 0
}
