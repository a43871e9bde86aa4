# Targets: test (the one CI and the README use), test-soak, lint, bench, fuzz, demo, chaos, chaos-canary.
# PKGS narrows any target to some packages, e.g. make test PKGS=./storagetest/...
# ETCD_VERSION runs it against another etcd, e.g. make test ETCD_VERSION=v3.7.3

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

PKGS ?= ./...

# ETCD_VERSION runs any target against another etcd release than go.mod
# requires, e.g. make test ETCD_VERSION=v3.7.3: scripts/etcd-version.sh makes
# a go.mod and go.sum for it under .etcd/ (git-ignored), and every go command
# reads them through GOFLAGS=-modfile. go.mod itself is not changed.
ifdef ETCD_VERSION
MODFILE := $(shell scripts/etcd-version.sh $(ETCD_VERSION))
ifeq ($(MODFILE),)
$(error scripts/etcd-version.sh $(ETCD_VERSION) failed)
endif
export GOFLAGS := $(strip $(shell go env GOFLAGS) -modfile=$(MODFILE))
# staticcheck cannot take -modfile (see scripts/etcd-version.sh): it runs in
# a copy of the tree whose go.mod is the generated one.
IN_ETCD_VERSION := scripts/etcd-version.sh $(ETCD_VERSION) --
endif

# Tools run with go run at pinned versions, so nothing needs installing and
# every machine runs the same checks. Each version builds with Go 1.26 here
# (revive v1.17.1 does not).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
REVIVE      := github.com/mgechev/revive@v1.12.0
# golang.org/x/perf has no tagged versions: this is a pseudo-version of its master.
BENCHSTAT   := golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

FUZZTIME ?= 1m

.PHONY: test test-soak lint bench fuzz demo chaos chaos-canary

## test: go vet, then every test with -race; fails on any failure or skip.
test:
	scripts/test.sh $(PKGS)

## test-soak: the whole suite N times in a row (default 5), each run as make
## test runs it; prints per test in how many runs it failed, the runs failed
## and the time of each run. LOAD=1 keeps one core busy meanwhile (a busy
## loop at normal priority). Example: make test-soak N=3 LOAD=1
N    ?= 5
LOAD ?= 0
test-soak:
	N=$(N) LOAD=$(LOAD) scripts/test-soak.sh $(PKGS)

## lint: go vet, staticcheck, and revive's check that exported names are documented.
lint:
	go vet $(PKGS)
	go vet -tags storage_testhooks $(PKGS)
	$(IN_ETCD_VERSION) go run $(STATICCHECK) -tags storage_testhooks $(PKGS)
	go run $(REVIVE) -set_exit_status -config revive.toml $(PKGS)

# bench knobs: BENCH selects benchmarks (a -bench regexp), BENCHCOUNT is the
# number of samples, BENCHTIME the time per sample, BENCH1MCOUNT the rounds
# (of those) that include the 1,000,000-item sizes. A round of every
# benchmark takes about 1.5 minutes on 2 cores, 4 to 6 with the 1M sizes, so
# the default run about 50 minutes.
BENCH        ?= .
BENCHCOUNT   ?= 10
BENCHTIME    ?= 500ms
BENCH1MCOUNT ?= 10

## bench: every benchmark BENCHCOUNT (10) times into bench.txt, then benchstat
## with lib beside its baselines and the ratios of medians against the
## targets (internal/benchratio; docs/BENCHMARKS.md). The samples are interleaved:
## each round runs every benchmark once (-count=1), so drift on a shared
## machine hits lib and raw alike, where -count=10 would run lib ten times,
## then raw ten times; every other round runs the baselines before lib
## (BENCH_RAW_FIRST=1). The first BENCH1MCOUNT rounds (all 10) add the
## 1,000,000-item sizes of the scale benchmarks (BENCH_1M=1: about 3.5
## minutes more per round), and the cache's peak-heap test runs at that size first. Compare two runs with: go run $(BENCHSTAT) old.txt bench.txt
bench:
	rm -f bench.txt
	BENCH_1M=1 go test -count=1 -timeout 40m -tags storage_testhooks -run '^TestCacheStartPeakHeapIsAtMostTwiceTheLoadedCache$$' -v $(PKGS)
	for i in $$(seq $(BENCHCOUNT)); do \
		BENCH_1M=$$((i <= $(BENCH1MCOUNT))) BENCH_RAW_FIRST=$$((i % 2 == 0)) go test -run '^$$' -bench '$(BENCH)' -benchmem -count=1 -timeout 60m -benchtime=$(BENCHTIME) $(PKGS) | tee -a bench.txt; \
	done
	go run $(BENCHSTAT) -col /impl bench.txt
	go run ./internal/benchratio bench.txt

## fuzz: each Fuzz target in turn for FUZZTIME (1m) (go test -fuzz takes one at a time).
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

## chaos: the chaos test (chaos_test.go), runs started for CHAOS_DURATION
## (5m); replay one run with CHAOS_SEED=N. make test runs it for 45s.
CHAOS_DURATION ?= 5m
chaos:
	CHAOS_DURATION=$(CHAOS_DURATION) go test -race -count=1 -timeout 30m -tags storage_testhooks -run '^TestChaos$$' -v .

## chaos-canary: one run per canary; each must be caught by the checkers. The
## canaries exist only in builds with the storage_testhooks tag, as make test's.
chaos-canary:
	go test -race -count=1 -tags storage_testhooks -run '^TestChaosCanaries$$' -v .
