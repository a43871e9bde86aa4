package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// testID names a test within the whole run.
type testID struct{ pkg, test string }

func (id testID) String() string { return id.pkg + " " + id.test }

// report tallies the events of one run. It is used by one goroutine.
type report struct {
	out io.Writer

	// output holds what each running test, or a package outside any test
	// (key with an empty test), has printed so far; it is printed if the
	// test or package fails or skips, and dropped once it passes.
	output map[testID][]string

	passed  int
	failed  []testID // tests and packages (empty test) that failed
	skipped []testID // tests that skipped
}

func newReport(out io.Writer) *report {
	return &report{out: out, output: make(map[testID][]string)}
}

// addLine records one line of go test's output.
func (r *report) addLine(line []byte) {
	var e event
	if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
		fmt.Fprint(r.out, string(line))
		return
	}
	r.add(e)
}

// add records one event.
func (r *report) add(e event) {
	id := testID{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		// Compiler errors: the package's fail event follows.
		fmt.Fprint(r.out, e.Output)
	case "output":
		if e.Test == "" && isPackageResult(e.Output) {
			fmt.Fprint(r.out, e.Output)
			return
		}
		r.output[id] = append(r.output[id], e.Output)
	case "pass":
		if e.Test != "" {
			r.passed++
		}
		delete(r.output, id)
	case "skip":
		// A package with no test files skips with no test name: not a test.
		if e.Test != "" {
			r.skipped = append(r.skipped, id)
			r.flush(id)
		}
		delete(r.output, id)
	case "fail":
		r.failed = append(r.failed, id)
		if e.Test == "" {
			r.flushUnfinished(e.Package)
		}
		r.flush(id)
	}
}

// isPackageResult reports whether a package-level output line is go test's
// one-line result for the package ("ok", "FAIL" or "?" for no test files),
// which is printed as it arrives so that a long run shows progress.
func isPackageResult(line string) bool {
	for _, prefix := range []string{"ok  \t", "FAIL\t", "?   \t"} {
		if strings.HasPrefix(line, prefix) {
			return true
		}
	}
	return false
}

// flush prints and drops what id has printed.
func (r *report) flush(id testID) {
	for _, line := range r.output[id] {
		fmt.Fprint(r.out, line)
	}
	delete(r.output, id)
}

// flushUnfinished prints what the tests of pkg that never ended have printed:
// when a test binary crashes or times out, the panic is in their output and
// no pass or fail event for them follows.
func (r *report) flushUnfinished(pkg string) {
	for id := range r.output {
		if id.pkg == pkg && id.test != "" {
			r.flush(id)
		}
	}
}

// summarize prints the skipped and failed tests, the elapsed time and the
// counts, and returns an error if the run must fail. The counts line comes
// last, in the "N passed, N failed, N skipped" form that CI reads.
func (r *report) summarize(elapsed time.Duration) error {
	r.list("skipped (a skip fails the run)", r.skipped)
	r.list("failed", r.failed)
	fmt.Fprintf(r.out, "elapsed: %v\n", elapsed.Round(time.Millisecond))

	var failedTests int
	for _, id := range r.failed {
		if id.test != "" {
			failedTests++
		}
	}
	var err error
	switch {
	case len(r.failed) > 0:
		err = fmt.Errorf("tests or packages failed: %d", len(r.failed))
	case len(r.skipped) > 0:
		err = fmt.Errorf("tests skipped: %d", len(r.skipped))
	case r.passed == 0:
		err = errors.New("no test ran")
	}
	if err != nil {
		fmt.Fprintf(r.out, "FAIL: %v\n", err)
	}
	fmt.Fprintf(r.out, "tests: %d passed, %d failed, %d skipped\n", r.passed, failedTests, len(r.skipped))
	return err
}

func (r *report) list(title string, ids []testID) {
	if len(ids) == 0 {
		return
	}
	fmt.Fprintf(r.out, "%s:\n", title)
	for _, id := range ids {
		name := id.String()
		if id.test == "" {
			name = id.pkg + " (package)"
		}
		fmt.Fprintf(r.out, "    %s\n", name)
	}
}
