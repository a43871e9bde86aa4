package storage

import (
	"path"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Key joins elem into an absolute, cleaned etcd key: Key("a", "b") is "/a/b".
// Ops use the keys they are given verbatim; Key is a convenience for building
// them consistently.
func Key(elem ...string) string {
	return path.Join(append([]string{"/"}, elem...)...)
}

// Prefix is Key with a trailing slash: Prefix("a", "b") is "/a/b/", so the
// prefix matches the keys below "/a/b" and never "/a/bc".
func Prefix(elem ...string) string {
	return withTrailingSlash(Key(elem...))
}

// withTrailingSlash gives every prefix op its boundary: "/a" becomes "/a/", so
// it never matches "/ab/x". The empty prefix stays empty (the whole keyspace,
// or for a cache its whole prefix).
func withTrailingSlash(prefix string) string {
	if prefix == "" || strings.HasSuffix(prefix, "/") {
		return prefix
	}
	return prefix + "/"
}

// prefixRange is the key range [start, end) that prefix covers, as etcd's
// WithPrefix computes it; the empty prefix covers the whole keyspace.
func prefixRange(prefix string) (start, end string) {
	if prefix == "" {
		return "\x00", "\x00"
	}
	return prefix, clientv3.GetPrefixRangeEnd(prefix)
}
