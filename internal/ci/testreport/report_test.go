package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestReport(t *testing.T) {
	const (
		noTestFiles = `{"Action":"skip","Package":"example.com/cmd"}`
		runA        = `{"Action":"run","Package":"example.com/p","Test":"TestA"}`
		outA        = `{"Action":"output","Package":"example.com/p","Test":"TestA","Output":"    a_test.go:9: said A\n"}`
		passA       = `{"Action":"pass","Package":"example.com/p","Test":"TestA","Elapsed":0.01}`
		failA       = `{"Action":"fail","Package":"example.com/p","Test":"TestA","Elapsed":0.01}`
		skipSub     = `{"Action":"skip","Package":"example.com/p","Test":"TestA/sub","Elapsed":0}`
		pkgOK       = `{"Action":"output","Package":"example.com/p","Output":"ok  \texample.com/p\t0.1s\n"}`
		pkgPass     = `{"Action":"pass","Package":"example.com/p","Elapsed":0.1}`
		leak        = `{"Action":"output","Package":"example.com/p","Output":"goleak: Errors on successful test run\n"}`
		pkgFail     = `{"Action":"fail","Package":"example.com/p","Elapsed":0.1}`
		buildOut    = `{"ImportPath":"example.com/p","Action":"build-output","Output":"p.go:3:1: syntax error\n"}`
		notJSON     = `go: warning: something`
	)
	tests := []struct {
		name    string
		lines   []string
		wantErr string // "" for a run that passes
		counts  string
		printed []string // must appear in the output
		hidden  []string // must not appear in the output
	}{
		{
			name:   "a passing test and a package without tests pass",
			lines:  []string{noTestFiles, runA, outA, passA, pkgOK, pkgPass},
			counts: "tests: 1 passed, 0 failed, 0 skipped",
			printed: []string{
				"ok  \texample.com/p",
			},
			hidden: []string{"said A"},
		},
		{
			name:    "a skipped subtest fails the run and is named",
			lines:   []string{runA, skipSub, passA, pkgOK, pkgPass},
			wantErr: "tests skipped: 1",
			counts:  "tests: 1 passed, 0 failed, 1 skipped",
			printed: []string{"example.com/p TestA/sub"},
		},
		{
			name:    "a failed test fails the run and its output is shown",
			lines:   []string{runA, outA, failA, pkgFail},
			wantErr: "tests or packages failed: 2",
			counts:  "tests: 0 passed, 1 failed, 0 skipped",
			printed: []string{"said A", "example.com/p TestA", "example.com/p (package)"},
		},
		{
			name:    "a package failing after its tests passed fails the run",
			lines:   []string{runA, passA, leak, pkgFail},
			wantErr: "tests or packages failed: 1",
			counts:  "tests: 1 passed, 0 failed, 0 skipped",
			printed: []string{"goleak: Errors"},
		},
		{
			name:    "a test left unfinished by a crash has its output shown",
			lines:   []string{runA, outA, pkgFail},
			wantErr: "tests or packages failed: 1",
			counts:  "tests: 0 passed, 0 failed, 0 skipped",
			printed: []string{"said A"},
		},
		{
			name:    "build errors are shown",
			lines:   []string{buildOut, pkgFail},
			wantErr: "tests or packages failed: 1",
			printed: []string{"syntax error"},
		},
		{
			name:    "a run with no test fails",
			lines:   []string{noTestFiles},
			wantErr: "no test ran",
			counts:  "tests: 0 passed, 0 failed, 0 skipped",
		},
		{
			name:    "lines that are not JSON are printed unchanged",
			lines:   []string{notJSON, runA, passA},
			counts:  "tests: 1 passed, 0 failed, 0 skipped",
			printed: []string{notJSON + "\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			r := newReport(&out)
			if err := r.read(strings.NewReader(strings.Join(tt.lines, "\n") + "\n")); err != nil {
				t.Fatal(err)
			}
			err := r.summarize(time.Second)
			got := out.String()

			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("summarize() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("summarize() = %v, want %q", err, tt.wantErr)
			}
			if tt.counts != "" && !strings.HasSuffix(got, tt.counts+"\n") {
				t.Errorf("output does not end with %q:\n%s", tt.counts, got)
			}
			for _, s := range tt.printed {
				if !strings.Contains(got, s) {
					t.Errorf("output lacks %q:\n%s", s, got)
				}
			}
			for _, s := range tt.hidden {
				if strings.Contains(got, s) {
					t.Errorf("output has %q:\n%s", s, got)
				}
			}
		})
	}
}
