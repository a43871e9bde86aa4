#!/usr/bin/env bash
# test.sh vets the module and runs its tests under the race detector. It fails
# if any test fails, if any test is skipped, or if no test runs: a skip is
# never intended here (etcd's integration framework skips silently while go
# test prints ok). The summary comes from internal/ci/testreport.
#
# Usage: scripts/test.sh [packages...]   (default ./...)
# TESTFLAGS adds flags to go test, e.g. TESTFLAGS='-run TestPut' scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pkgs=("$@")
if [[ ${#pkgs[@]} -eq 0 ]]; then
	pkgs=(./...)
fi

# The test hooks (testhooks_on.go: canaries, restart and page hooks) are built
# only with this tag; vet checks the normal build too.
tags=storage_testhooks
go vet "${pkgs[@]}"
go vet -tags "$tags" "${pkgs[@]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Build the reporter first, so that its compile errors are not mistaken for
# test output.
go build -o "$tmp/testreport" ./internal/ci/testreport

# pipefail: the run fails if go test fails even when the report would pass.
# shellcheck disable=SC2086 # TESTFLAGS is a list of flags
go test -race -count=1 -timeout 30m -tags "$tags" -json ${TESTFLAGS:-} "${pkgs[@]}" | "$tmp/testreport"
