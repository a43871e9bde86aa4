# Targets: test (the one CI and the README use), lint, bench, fuzz, demo.
# PKGS narrows any target to some packages, e.g. make test PKGS=./storagetest/...

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

PKGS ?= ./...

# Tools run with go run at pinned versions, so nothing needs installing and
# every machine runs the same checks. Each version builds with Go 1.26 here
# (revive v1.17.1 does not).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
REVIVE      := github.com/mgechev/revive@v1.12.0
# golang.org/x/perf has no tagged versions: this is a pseudo-version of its master.
BENCHSTAT   := golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

FUZZTIME ?= 30s

.PHONY: test lint bench fuzz demo

## test: go vet, then every test with -race; fails on any failure or skip.
test:
	scripts/test.sh $(PKGS)

## lint: go vet, staticcheck, and revive's check that exported names are documented.
lint:
	go vet $(PKGS)
	go run $(STATICCHECK) $(PKGS)
	go run $(REVIVE) -set_exit_status -config revive.toml $(PKGS)

## bench: every benchmark ten times into bench.txt, summarised by benchstat.
## Compare two runs with: go run $(BENCHSTAT) old.txt bench.txt
bench:
	go test -run '^$$' -bench . -benchmem -count=10 $(PKGS) | tee bench.txt
	go run $(BENCHSTAT) bench.txt

## fuzz: each Fuzz target in turn for FUZZTIME (go test -fuzz takes one at a time).
fuzz:
	pkgs=$$(go list $(PKGS)); \
	for pkg in $$pkgs; do \
		list=$$(go test -list '^Fuzz' "$$pkg"); \
		for target in $$(grep '^Fuzz' <<<"$$list" || true); do \
			go test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) "$$pkg"; \
		done; \
	done

## demo: run the demo program.
demo:
	go run ./cmd/storage-demo
