#!/usr/bin/env bash
# etcd-version.sh builds the module against another etcd release than go.mod
# requires, without changing go.mod: it writes .etcd/VERSION/go.mod and go.sum
# (git-ignored), which are go.mod and go.sum with every etcd module go.mod
# names (client, api, client/pkg, server, tests, ...) at VERSION, tidied.
#
# Usage:
#   scripts/etcd-version.sh VERSION
#       prints the path of that go.mod, for go's -modfile flag:
#       GOFLAGS=-modfile=$(scripts/etcd-version.sh v3.7.3) go test ./...
#   scripts/etcd-version.sh VERSION -- COMMAND [ARGS...]
#       runs COMMAND in a copy of the work tree (.etcd/VERSION/tree) whose
#       go.mod and go.sum are VERSION's. This is for tools built on
#       golang.org/x/tools/go/packages, such as staticcheck: go/packages runs
#       one go list with GO111MODULE=off, which fails when GOFLAGS holds
#       -modfile, so those tools cannot be given -modfile at all.
#
# The files are made again when go.mod, go.sum or this script change. Making
# them needs the Go module proxy the first time a VERSION is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $# -lt 1 || ! $1 =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
	echo "usage: $0 VERSION [-- COMMAND [ARGS...]]   (VERSION like v3.7.3)" >&2
	exit 2
fi
version=$1
shift
dir=.etcd/$version

# The etcd modules go.mod requires: every go.etcd.io/etcd/.../v3 module.
# (go.etcd.io/etcd/client/v2 is versioned apart, and raft and bbolt have
# releases of their own: tidy takes them from the etcd modules' go.mod.)
etcd_modules() {
	awk '$1 ~ /^go\.etcd\.io\/etcd\/.*\/v3$/ && $2 ~ /^v3\./ { print $1 }' go.mod
}

tmp=
trap 'if [[ -n $tmp ]]; then rm -rf "$tmp"; fi' EXIT

generate() {
	tmp=$(mktemp -d .etcd/tmp.XXXXXX)
	chmod 755 "$tmp"
	cp go.mod go.sum "$tmp/"
	local mods
	mods=$(etcd_modules)
	if [[ -z $mods ]]; then
		echo "$0: go.mod requires no go.etcd.io/etcd/.../v3 module" >&2
		return 1
	fi
	local m
	for m in $mods; do
		go mod edit -modfile="$tmp/go.mod" -require="$m@$version"
	done
	# A GOFLAGS -modfile from the caller would win over this one.
	GOFLAGS='' go mod tidy -modfile="$tmp/go.mod" >&2
	echo "$stamp" >"$tmp/stamp"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	tmp=
}

stamp=$(cat go.mod go.sum "${BASH_SOURCE[0]}" | cksum)
mkdir -p .etcd
if [[ ! -f $dir/stamp || $(cat "$dir/stamp") != "$stamp" ]]; then
	echo "etcd-version: making $dir/go.mod (etcd $version)" >&2
	generate
fi

if [[ $# -eq 0 ]]; then
	echo "$PWD/$dir/go.mod"
	exit 0
fi
if [[ $1 != -- || $# -lt 2 ]]; then
	echo "usage: $0 VERSION [-- COMMAND [ARGS...]]" >&2
	exit 2
fi
shift

# The copy holds what git would commit now: tracked files as they are in
# the work tree, and new files that are not ignored.
tree=$dir/tree
rm -rf "$tree"
mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard |
	while IFS= read -r -d '' f; do
		[[ -f $f ]] && printf '%s\0' "$f"
	done |
	xargs -0 cp --parents -t "$tree"
cp "$dir/go.mod" "$dir/go.sum" "$tree/"

# A -modfile in GOFLAGS (make sets one for ETCD_VERSION) would point the
# copy at the generated go.mod again, and break the very tools run here.
flags=()
for f in ${GOFLAGS:-}; do
	[[ $f == -modfile=* ]] || flags+=("$f")
done
export GOFLAGS="${flags[*]}"
cd "$tree"
exec "$@"
