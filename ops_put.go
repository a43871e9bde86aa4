package storage

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage/internal/observe"
)

// putKind is what a put asks of the stored key. A byte, so that it packs
// with putOp's flags (see putOp).
type putKind uint8

const (
	putAlways putKind = iota // no compare
	putCreate                // the key must not exist
	putUpdate                // the stored version (or mod revision) must match
)

// opName is the kind's op name in metrics.
func (k putKind) opName() observe.Op {
	switch k {
	case putCreate:
		return observe.OpCreate
	case putUpdate:
		return observe.OpUpdate
	}
	return observe.OpPut
}

func (k putKind) String() string {
	switch k {
	case putCreate:
		return "create"
	case putUpdate:
		return "update"
	}
	return "put"
}

// PutOp is an operation that puts a key-value pair into storage.
type PutOp[V Value] interface {
	TxnOperation
	// WithTTL sets a time-to-live for this value: etcd removes the key
	// once it has expired. The key exists for at least ttl after Exec or
	// Commit is called. On a healthy cluster it is gone no later than
	// ceil(ttl + 0.5s) seconds after Exec returns, plus up to 0.5 s for
	// etcd's expiry check. etcd may round a short TTL up to its minimum
	// lease TTL. A leader change restarts every lease's clock. Either can
	// make expiry come later than that bound, never earlier.
	//
	// The put is attached to a lease of ceil(ttl + 0.5s) seconds, or of
	// etcd's maximum lease TTL where that is less. Leases are shared, as
	// Kubernetes' apiserver shares them: a lease granted for one TTL put
	// serves the later TTL puts of the same client whose expiry it still
	// covers. A stream of TTL puts then costs about one grant per lease
	// lifetime, and live leases stay bounded. A lease is handed out only
	// while it has at least ttl left, counted from when Exec or Commit was
	// called. In a Txn another op's lease grant may delay the request after
	// that point, which the bound above already allows for. If etcd reports
	// that a shared lease is gone, the request is sent once more with a
	// fresh lease. A shared lease is gone when another client revoked it or
	// a restored cluster lost it.
	//
	// A put without WithTTL detaches the key from its lease: to keep a key
	// expiring, put it with a TTL every time, as a heartbeat does. A caller's
	// clientv3.WithLease without WithTTL is honoured.
	//
	// Exec and Commit fail with an error naming the op and key, before any
	// lease is granted and before any request, for a ttl that is not
	// positive. They fail the same way for a ttl above etcd's maximum lease
	// TTL of 9,000,000,000 s, and for a caller's clientv3.WithLease beside
	// WithTTL.
	WithTTL(ttl time.Duration) PutOp[V]
	// WithUpdatedVersion will update the version on the value after the put
	// operation completes.
	WithUpdatedVersion() PutOp[V]
	// Exec runs the op alone.
	Exec(ctx context.Context) error
	// Revision returns the revision of etcd's response to the op, also
	// when its compare failed; it is 0 until etcd answered.
	Revision() int64
	VersionUpdater
}

// putOp implements PutOp for Put, Create and Update, alone, in a Txn, and
// through a Cache.
//
// A caller allocates one per put, so its size shows in every put's cost: it
// is kept at 128 bytes, a size class of Go's allocator (kind and the flags
// share a word; the compare a conditional op sent is not stored but derived
// again from the value, which the op's runs leave unchanged). One field more
// puts it in the 144-byte class.
type putOp[V Value] struct {
	client *clientv3.Client
	key    string
	val    V
	opts   []clientv3.OpOption
	cache  writeThrough // non-nil for a cache's op: written through on success

	ttl           time.Duration
	kind          putKind
	hasTTL        bool
	updateVersion bool
	data          []byte           // the bytes sent by the last ClientOp
	lease         clientv3.LeaseID // the shared lease attached by the last ClientOp, 0 if none
	revision      int64
}

var (
	_ PutOp[*StoredValue] = (*putOp[*StoredValue])(nil)
	_ CachedTxnOp         = (*putOp[*StoredValue])(nil)
)

// NewPutOp returns an operation that stores a key value pair with an optional
// time-to-live. This operation does not enforce any version constraints.
func NewPutOp[V Value](client *clientv3.Client, key string, val V, options ...clientv3.OpOption) PutOp[V] {
	return &putOp[V]{client: client, kind: putAlways, key: key, val: val, opts: options}
}

// NewCreateOp returns an operation that creates a key value pair with an
// optional time-to-live. This operation will fail with an error wrapping
// [ErrAlreadyExists] and naming the key if the given key already exists.
func NewCreateOp[V Value](client *clientv3.Client, key string, val V, options ...clientv3.OpOption) PutOp[V] {
	return &putOp[V]{client: client, kind: putCreate, key: key, val: val, opts: options}
}

// NewUpdateOp returns an operation that updates an existing key value pair
// with a new value and an optional time-to-live. This operation will fail
// with an error wrapping [ErrValueVersionMismatch] if the stored value's
// version does not match the given value's version. Note that this operation
// is equivalent to a create when the item version is 0.
//
// For a value embedding [RevisionedValue] that carries a mod revision, the
// stored mod revision is compared instead, so a value read before its key was
// deleted and re-created is refused.
func NewUpdateOp[V Value](client *clientv3.Client, key string, val V, options ...clientv3.OpOption) PutOp[V] {
	return &putOp[V]{client: client, kind: putUpdate, key: key, val: val, opts: options}
}

func (p *putOp[V]) WithTTL(ttl time.Duration) PutOp[V] {
	p.ttl, p.hasTTL = ttl, true
	return p
}

func (p *putOp[V]) WithUpdatedVersion() PutOp[V] {
	p.updateVersion = true
	return p
}

func (p *putOp[V]) Exec(ctx context.Context) (err error) {
	defer startOp(p.kind.opName()).done(&err)
	return execOne(ctx, p.client, p)
}

func (p *putOp[V]) describe() string { return p.kind.String() + " " + p.key }

func (p *putOp[V]) ClientOp(ctx context.Context) (clientv3.Op, error) {
	if isNil(p.val) {
		return clientv3.Op{}, fmt.Errorf("%s: %w", p.describe(), errNilValue)
	}
	p.lease = 0
	if p.hasTTL {
		if err := checkTTL(p.describe(), p.ttl); err != nil {
			return clientv3.Op{}, err
		}
	}
	if p.cache != nil {
		if err := p.cache.checkWrite(p.key); err != nil {
			return clientv3.Op{}, fmt.Errorf("%s: %w", p.describe(), err)
		}
	}
	data, err := encodeValue(p.key, p.val)
	if err != nil {
		return clientv3.Op{}, fmt.Errorf("%s: %w", p.describe(), err)
	}
	opts := p.opts
	if p.UpdateVersionEnabled() {
		opts = append(opts[:len(opts):len(opts)], clientv3.WithPrevKV())
	}
	if p.hasTTL {
		// Check the caller's options before a lease is granted for nothing.
		if len(p.opts) > 0 {
			if setsLease(p.opts) {
				// Ours would silently replace it: the last WithLease wins.
				return clientv3.Op{}, invalidf("%s: invalid option: a caller's WithLease conflicts with WithTTL, which attaches a lease of its own", p.describe())
			}
			if _, err := p.build("", opts); err != nil {
				return clientv3.Op{}, err
			}
		}
		lease, err := grantLease(ctx, p.client, p.ttl)
		if err != nil {
			return clientv3.Op{}, fmt.Errorf("%s: %w", p.describe(), err)
		}
		p.lease = lease
		opts = append(opts[:len(opts):len(opts)], clientv3.WithLease(lease))
	}
	op, err := p.build(data, opts)
	p.data = op.ValueBytes() // the op's own copy: never modified
	return op, err
}

// build returns the put with opts. clientv3.OpPut panics on options that do
// not fit a put; only the caller's can (the library's own, WithPrevKV and
// WithLease, always fit), so without them the put is built directly: the
// checked build costs two allocations and the op's name, on every put.
func (p *putOp[V]) build(data string, opts []clientv3.OpOption) (clientv3.Op, error) {
	if len(p.opts) == 0 {
		return clientv3.OpPut(p.key, data, opts...), nil
	}
	return checkedOp(p.describe(), func() clientv3.Op { return clientv3.OpPut(p.key, data, opts...) })
}

func (p *putOp[V]) Cmps() []clientv3.Cmp { return p.appendCmps(nil) }

func (p *putOp[V]) appendCmps(cmps []clientv3.Cmp) []clientv3.Cmp {
	if p.kind == putAlways {
		return cmps
	}
	return append(cmps, p.want().cmp(p.key))
}

// want is the compare a Create or Update sends: the key must not exist, or
// the stored version (or mod revision) must be the value's. The value is not
// changed while the op runs (Txn's contract; versions are written back only
// after success), so a failure reads the same expectation Cmps sent.
func (p *putOp[V]) want() expectation {
	if p.kind == putCreate {
		return expectation{}
	}
	return expect(p.val)
}

// failure explains why the op's compare did not hold against the key as read
// at the failed txn's revision (nil if it does not exist); nil if it held, or
// if the op sent none: another op's compare on the same key may have failed,
// which is not this op's failure.
func (p *putOp[V]) failure(kv *mvccpb.KeyValue) error {
	switch p.kind {
	case putAlways:
		return nil
	case putCreate:
		if kv != nil {
			return fmt.Errorf("%s: %w", p.describe(), ErrAlreadyExists)
		}
		return nil
	}
	return p.want().failure(p.describe(), kv)
}

// knownFailure: a failed create compare means the key exists, which is all
// its error says (failure); an update's error gives the stored version.
func (p *putOp[V]) knownFailure() error {
	if p.kind == putCreate {
		return p.failure(&mvccpb.KeyValue{})
	}
	return nil
}

func (p *putOp[V]) unexplained(rev int64, readErr error) error {
	return unexplainedFailure(p.describe(), ErrValueVersionMismatch, rev, readErr)
}

func (p *putOp[V]) sharedLease() clientv3.LeaseID { return p.lease }

func (p *putOp[V]) UpdateRevision(revision int64) { p.revision = revision }

func (p *putOp[V]) Revision() int64 { return p.revision }

// UpdateVersionEnabled reports whether the op writes the version back. A
// cache's puts always do, as the cache needs the version too.
func (p *putOp[V]) UpdateVersionEnabled() bool { return p.updateVersion || p.cache != nil }

func (p *putOp[V]) UpdateVersion(prevKVs map[string]*mvccpb.KeyValue) {
	if !p.UpdateVersionEnabled() {
		return
	}
	version := int64(1)
	if prev := prevKVs[p.key]; prev != nil {
		version = prev.Version + 1
	}
	// Every put of one request gets the request's revision as mod revision.
	setVersionAndRevision(p.val, version, p.revision)
}

func (p *putOp[V]) UpdateCache() {
	if p.cache != nil {
		p.cache.writePut(p.key, p.data, p.val.Version(), p.revision)
	}
}

func (p *putOp[V]) txnKey() (kind, key, end string) { return "put", p.key, "" }
