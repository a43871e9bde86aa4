// Package storage gives services typed, versioned, transactional access to
// etcd v3, with watches and a write-through cache that stay correct through
// failures.
//
// Values are Go structs stored as JSON (gzip-compressed from 2048 bytes on)
// that carry the etcd version of their key:
//
//	type Host struct {
//		storage.StoredValue
//		Name string `json:"name"`
//	}
//
//	h := &Host{Name: "db-1"}
//	err := storage.NewCreateOp(client, storage.Key("hosts", "db-1"), h).
//		WithUpdatedVersion().Exec(ctx) // h.Version() == 1
//	...
//	h.Name = "db-1a"
//	err = storage.NewUpdateOp(client, storage.Key("hosts", "db-1"), h).Exec(ctx)
//	if errors.Is(err, storage.ErrValueVersionMismatch) {
//		// someone else changed it since we read it
//	}
//
// Every op runs alone with Exec or together with others, atomically, in a
// [Txn]. [WatchOp] delivers every change of a key or prefix exactly once and
// in order, through dropped connections, member restarts and compactions.
// [Cache] keeps a prefix in memory through the same watch and writes through
// to etcd.
package storage

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TxnOperation is a storage operation that can be used in a transaction.
// An op records what it sent and what came back, so it must not run
// concurrently with itself (Exec'd, or committed in a [Txn]), and the value
// it holds must not be changed while it runs.
//
// A caller's clientv3 options that do not fit an op never make it panic,
// though clientv3's Op constructors panic on them. Exec and Commit fail
// instead, with an error naming the op and key, and nothing is written. A
// range option on an op that names one key is refused the same way.
type TxnOperation interface {
	// ClientOp returns the etcd op to run. It may do I/O (a put with a TTL
	// obtains a lease) and returns an error for options that do not fit.
	ClientOp(ctx context.Context) (clientv3.Op, error)
	// Cmps returns the compares the op needs to hold; all compares of a
	// transaction are ANDed.
	Cmps() []clientv3.Cmp
	// UpdateRevision records the revision of the response that ran the op.
	UpdateRevision(revision int64)
	// Revision returns the revision recorded by UpdateRevision, 0 before.
	Revision() int64
}

// VersionUpdater are the methods that an operation can implement to support
// updating the value version after an update. This exists as a separate
// interface to make it usable for runtime type checking. Txn.Commit calls
// UpdateRevision before UpdateVersion, so an op can read its revision there.
type VersionUpdater interface {
	// UpdateVersionEnabled should return true if this operation should
	// update the item's version.
	UpdateVersionEnabled() bool
	// UpdateVersion should read the previous KVs that it manages from
	// prevKVs (keyed by key; absent when the key did not exist) and update
	// its item's versions.
	UpdateVersion(prevKVs map[string]*mvccpb.KeyValue)
}

// CachedTxnOp is implemented by the write ops of a [Cache]. After a
// successful commit, Txn.Commit calls UpdateCache so that the cache holds the
// result at once.
type CachedTxnOp interface {
	UpdateCache()
}
