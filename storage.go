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
	"fmt"
	"reflect"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TxnOperation is a storage operation that can be used in a transaction.
// An op records what it sent and what came back, so it must not run
// concurrently with itself (Exec'd, or committed in a [Txn]), and the value
// it holds must not be changed while it runs.
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

// PutOp is an operation that puts a key-value pair into storage.
type PutOp[V Value] interface {
	TxnOperation
	// WithTTL sets a time-to-live for this value. The value will
	// automatically be removed after the TTL has expired. The put is attached
	// to a lease, new or shared with earlier TTL puts of the same client,
	// whose TTL is ceil(ttl + 0.5s) seconds and which has at least ttl left
	// counted from when Exec (or Commit) was called. That is not counted from
	// when the request is sent: in a Txn, another op's lease grant may delay
	// it. So the key exists for at least ttl after Exec is called, and on a
	// healthy cluster is gone no later than ceil(ttl + 0.5s) seconds plus
	// etcd's expiry check (up to 0.5 s) after Exec returns.
	//
	// Exec fails with an error naming the op and key, before any lease is
	// granted, for a ttl that is not positive or is above etcd's maximum lease
	// TTL (9,000,000,000 s), and for a caller's clientv3.WithLease beside
	// WithTTL (a caller's WithLease alone is honoured).
	WithTTL(ttl time.Duration) PutOp[V]
	// WithUpdatedVersion will update the version on the value after the put
	// operation completes.
	WithUpdatedVersion() PutOp[V]
	// Exec runs the op alone.
	Exec(ctx context.Context) error
	// The revision returned by the server. Only populated after Exec is
	// called.
	Revision() int64
	VersionUpdater
}

// GetOp is an operation that returns a single value. Exec returns an error
// wrapping [ErrNotFound] when the key does not exist.
type GetOp[V Value] interface {
	Exec(ctx context.Context) (V, error)
}

// GetMultipleOp is an operation that returns multiple values. An empty
// result is a nil error and no values.
type GetMultipleOp[V Value] interface {
	Exec(ctx context.Context) ([]V, error)
}

// ExistsOp is an operation that reports whether a key exists.
type ExistsOp interface {
	Exec(ctx context.Context) (bool, error)
}

// DeleteOp is an operation that deletes one or more values from storage, and
// returns the number of values deleted.
type DeleteOp interface {
	TxnOperation
	Exec(ctx context.Context) (int64, error)
	// The revision returned by the server. Only populated after Exec() is
	// called.
	Revision() int64
}

// DeleteValueOp is a delete operation that deletes a single value from
// storage and enforces value version constraints. Exec returns an error
// wrapping [ErrValueVersionMismatch] if the constraint fails.
type DeleteValueOp[V Value] interface {
	TxnOperation
	Exec(ctx context.Context) error
	// The revision returned by the server. Only populated after Exec is
	// called.
	Revision() int64
}

// DecodeGetResponse is a helper function to extract typed values from a
// clientv3.GetResponse. It reads only resp.Kvs, so a hand-built response
// without a Header works. Each value's version (and a RevisionedValue's mod
// revision) is set from its KeyValue. The first value that cannot be decoded
// fails the call with an error naming its key.
func DecodeGetResponse[V Value](resp *clientv3.GetResponse) ([]V, error) {
	if resp == nil || len(resp.Kvs) == 0 {
		return nil, nil
	}
	out := make([]V, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := decodeKV[V](kv)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// checkedOp builds a clientv3 op, turning the panics of clientv3's Op
// constructors on options that do not fit the op (a lease on a delete, a
// revision on a put, ...) into an error naming the op and key.
func checkedOp(what string, build func() clientv3.Op) (op clientv3.Op, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: invalid option: %v", what, r)
		}
	}()
	return build(), nil
}

// inspectOptions applies opts to a scratch op so their effect can be read
// through clientv3.Op's accessors without building a request.
func inspectOptions(opts []clientv3.OpOption) clientv3.Op {
	var op clientv3.Op
	for _, o := range opts {
		o(&op)
	}
	return op
}

// setsLease reports whether opts attach a lease (other than NoLease).
// clientv3.Op has no accessor for its lease (neither in v3.6 nor in v3.7),
// so the options' op is compared with a copy whose lease is cleared: the two
// differ only if a lease was set. clientv3.Op holds no func values, so
// reflect.DeepEqual compares every field.
func setsLease(opts []clientv3.OpOption) bool {
	op := inspectOptions(opts)
	cleared := op
	clientv3.WithLease(clientv3.NoLease)(&cleared)
	return !reflect.DeepEqual(op, cleared)
}
