#!/usr/bin/env bash
# test-soak.sh runs the whole suite N times in a row, each run as
# scripts/test.sh runs it (go test -race -count=1 through the testreport
# summary, which fails a run on any failed or skipped test), and then prints,
# per test, in how many runs it failed, how many runs failed, and the time of
# each run. It exits 1 if any run failed.
#
# With LOAD=1 one core is kept busy meanwhile by a busy loop at normal
# priority, as another job on a shared 2-core machine would.
#
# Usage: N=5 LOAD=1 scripts/test-soak.sh [packages...]   (default ./...)
# The logs of every run (go test -json and the report) stay in SOAK_DIR
# (default: a new folder under /tmp, printed at the end).
# TESTFLAGS adds flags to go test, as for scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${N:-5}
load=${LOAD:-0}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
	echo "test-soak: N must be a positive number, not '$runs'" >&2
	exit 2
fi
pkgs=("$@")
if [[ ${#pkgs[@]} -eq 0 ]]; then
	pkgs=(./...)
fi
dir=${SOAK_DIR:-$(mktemp -d /tmp/test-soak.XXXXXX)}
mkdir -p "$dir"

hog=
cleanup() {
	if [[ -n $hog ]]; then
		kill "$hog" 2>/dev/null || true
		wait "$hog" 2>/dev/null || true
	fi
}
trap cleanup EXIT

tags=storage_testhooks # as scripts/test.sh
go vet "${pkgs[@]}"
go vet -tags "$tags" "${pkgs[@]}"
go build -o "$dir/testreport" ./internal/ci/testreport

if [[ $load == 1 ]]; then
	(while :; do :; done) &
	hog=$!
	echo "test-soak: busy loop on one core (pid $hog)"
fi

# failures prints one line per test that failed or was skipped in a go test
# -json stream ("package test"), and one per package that failed with no
# failed test of its own ("package (package)": a build error, a panic
# outside a test, no test run).
failures() {
	awk '
		/"Action":"(fail|skip)"/ {
			pkg = $0; sub(/.*"Package":"/, "", pkg); sub(/".*/, "", pkg)
			if ($0 ~ /"Test":"/) {
				name = $0; sub(/.*"Test":"/, "", name); sub(/".*/, "", name)
				bad[pkg " " name] = 1; tested[pkg] = 1
			} else if ($0 ~ /"Action":"fail"/) {
				pkgfail[pkg] = 1
			}
		}
		END {
			for (k in bad) print k
			for (p in pkgfail) if (!(p in tested)) print p " (package)"
		}' "$1" | sort -u
}

failed=0
times=()
: >"$dir/failures"
for i in $(seq "$runs"); do
	start=$(date +%s)
	status=ok
	# shellcheck disable=SC2086 # TESTFLAGS is a list of flags
	if ! go test -race -count=1 -timeout 30m -tags "$tags" -json ${TESTFLAGS:-} "${pkgs[@]}" 2>&1 |
		tee "$dir/run$i.json" | "$dir/testreport" >"$dir/run$i.report"; then
		status=FAILED
		failed=$((failed + 1))
	fi
	secs=$(($(date +%s) - start))
	times+=("run $i: $status in $((secs / 60))m$((secs % 60))s")
	failures "$dir/run$i.json" | tee -a "$dir/failures" >"$dir/run$i.failures"
	echo "test-soak: run $i of $runs: $status in $((secs / 60))m$((secs % 60))s; $(tail -n 1 "$dir/run$i.report")"
	sed 's/^/  failed: /' "$dir/run$i.failures"
done

echo
echo "test-soak summary: $runs runs of ${pkgs[*]} (LOAD=$load), $failed failed"
for line in "${times[@]}"; do
	echo "  $line"
done
if [[ -s $dir/failures ]]; then
	echo "runs failed, per test:"
	sort "$dir/failures" | uniq -c | sort -rn | awk -v n="$runs" '{c = $1; $1 = ""; printf "  %d of %d%s\n", c, n, $0}'
else
	echo "runs failed, per test: none"
fi
echo "logs: $dir"
echo "test-soak: $((runs - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
