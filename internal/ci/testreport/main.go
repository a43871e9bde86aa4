// Testreport reads the output of `go test -json` on standard input, prints the
// output of tests that failed or were skipped, package results and build
// errors as they arrive, and ends with a summary. It exits 1 if any test or
// package failed, if any test was skipped, or if no test ran.
//
// A skip fails the run because in this project a skip is never intended: etcd's
// integration framework skips tests silently (under -short, after a leaked
// goroutine, under t.Parallel) while `go test` still prints ok. A package
// without test files is reported as skipped too; that is not a test and passes.
//
// Usage:
//
//	go test -json ./... | go run ./internal/ci/testreport
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	start := time.Now()
	r := newReport(os.Stdout)
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: read go test output: %v\n", err)
		os.Exit(2)
	}
	if err := r.summarize(time.Since(start)); err != nil {
		os.Exit(1) // summarize has said why
	}
}

// read feeds r every line of in until EOF. Lines that are not JSON, such as
// messages from the go command, are printed unchanged.
func (r *report) read(in io.Reader) error {
	br := bufio.NewReader(in)
	for {
		// ReadBytes, not a Scanner: a test can print a line longer than any
		// fixed buffer.
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			r.addLine(line)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
