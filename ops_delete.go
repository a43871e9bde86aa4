package storage

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage/internal/observe"
)

// DeleteOp is an operation that deletes one or more values from storage, and
// returns the number of values deleted.
type DeleteOp interface {
	TxnOperation
	Exec(ctx context.Context) (int64, error)
	// Revision returns the revision of etcd's response to the op; it is 0
	// until etcd answered.
	Revision() int64
}

// DeleteValueOp is a delete operation that deletes a single value from
// storage and enforces value version constraints. Exec returns an error
// wrapping [ErrValueVersionMismatch] if the constraint fails.
type DeleteValueOp[V Value] interface {
	TxnOperation
	Exec(ctx context.Context) error
	// Revision returns the revision of etcd's response to the op, also
	// when its compare failed; it is 0 until etcd answered.
	Revision() int64
}

// deleteOp implements DeleteOp for a single key and for a prefix.
type deleteOp struct {
	client *clientv3.Client
	key    string // the key, or the prefix with its trailing slash
	prefix bool
	opts   []clientv3.OpOption
	cache  writeThrough // non-nil for a cache's op

	revision int64
	deleted  int64
}

var (
	_ DeleteOp    = (*deleteOp)(nil)
	_ CachedTxnOp = (*deleteOp)(nil)
)

// NewDeleteKeyOp returns an operation that deletes a single value by key.
// Exec returns the number of keys deleted (0 or 1).
func NewDeleteKeyOp(client *clientv3.Client, key string, options ...clientv3.OpOption) DeleteOp {
	return &deleteOp{client: client, key: key, opts: options}
}

// NewDeletePrefixOp returns an operation that deletes every value under
// prefix (a trailing slash is added if missing, so "/a" never deletes "/ab").
// Exec returns the number of keys deleted. An empty prefix ("" or "/") is
// refused with an error: deleting the whole keyspace is never what a caller
// means.
func NewDeletePrefixOp(client *clientv3.Client, prefix string, options ...clientv3.OpOption) DeleteOp {
	return &deleteOp{client: client, key: withTrailingSlash(prefix), prefix: true, opts: options}
}

// opName is the op's name in metrics.
func (d *deleteOp) opName() observe.Op {
	if d.prefix {
		return observe.OpDeletePrefix
	}
	return observe.OpDeleteKey
}

func (d *deleteOp) describe() string {
	if d.prefix {
		return fmt.Sprintf("delete prefix %s", d.key)
	}
	return "delete " + d.key
}

func (d *deleteOp) Exec(ctx context.Context) (_ int64, err error) {
	defer startOp(d.opName()).done(&err)
	if err := execOne(ctx, d.client, d); err != nil {
		return 0, err
	}
	return d.deleted, nil
}

func (d *deleteOp) ClientOp(context.Context) (clientv3.Op, error) {
	if d.cache != nil && d.key != "" && d.key != "/" {
		if err := d.cache.checkWrite(d.key); err != nil {
			return clientv3.Op{}, fmt.Errorf("%s: %w", d.describe(), err)
		}
	}
	if !d.prefix {
		if err := checkSingleKeyOptions(d.describe(), d.opts); err != nil {
			return clientv3.Op{}, err
		}
		return checkedOp(d.describe(), func() clientv3.Op { return clientv3.OpDelete(d.key, d.opts...) })
	}
	if err := d.checkKey(); err != nil {
		return clientv3.Op{}, err
	}
	if o := inspectOptions(d.opts); o.RangeBytes() != nil || o.IsOptsWithFromKey() {
		return clientv3.Op{}, invalidf("%s: invalid option: a range conflicts with the prefix", d.describe())
	}
	opts := append(d.opts[:len(d.opts):len(d.opts)], clientv3.WithPrefix())
	return checkedOp(d.describe(), func() clientv3.Op { return clientv3.OpDelete(d.key, opts...) })
}

// checkKey refuses a prefix delete of the whole keyspace.
func (d *deleteOp) checkKey() error {
	if d.prefix && (d.key == "" || d.key == "/") {
		return invalidf("delete prefix %q: refusing to delete the whole keyspace", d.key)
	}
	return nil
}

func (d *deleteOp) Cmps() []clientv3.Cmp { return nil }

func (d *deleteOp) UpdateRevision(revision int64) { d.revision = revision }

func (d *deleteOp) Revision() int64 { return d.revision }

func (d *deleteOp) setDeleted(n int64) { d.deleted = n }

func (d *deleteOp) UpdateCache() {
	if d.cache != nil {
		d.cache.writeDelete(d.key, d.prefix, d.revision)
	}
}

func (d *deleteOp) txnKey() (kind, key, end string) {
	if d.prefix {
		start, end := prefixRange(d.key)
		return "delete", start, end
	}
	return "delete", d.key, ""
}

// deleteValueOp implements DeleteValueOp.
type deleteValueOp[V Value] struct {
	client *clientv3.Client
	key    string
	val    V
	opts   []clientv3.OpOption
	cache  writeThrough // non-nil for a cache's op

	want     expectation // the compare sent by the last Cmps
	revision int64
}

var _ DeleteValueOp[*StoredValue] = (*deleteValueOp[*StoredValue])(nil)

// NewDeleteValueOp deletes a single value if its version matches the given
// value's version. Its Exec method will return an error wrapping
// [ErrValueVersionMismatch] if the stored value version did not match the
// given value version. For a value embedding [RevisionedValue] that carries a
// mod revision, the stored mod revision is compared instead.
func NewDeleteValueOp[V Value](client *clientv3.Client, key string, val V, options ...clientv3.OpOption) DeleteValueOp[V] {
	return &deleteValueOp[V]{client: client, key: key, val: val, opts: options}
}

func (d *deleteValueOp[V]) Exec(ctx context.Context) (err error) {
	defer startOp(observe.OpDeleteValue).done(&err)
	return execOne(ctx, d.client, d)
}

func (d *deleteValueOp[V]) ClientOp(context.Context) (clientv3.Op, error) {
	if isNil(d.val) {
		return clientv3.Op{}, fmt.Errorf("%s: %w", d.describe(), errNilValue)
	}
	if err := checkSingleKeyOptions(d.describe(), d.opts); err != nil {
		return clientv3.Op{}, err
	}
	if d.cache != nil {
		if err := d.cache.checkWrite(d.key); err != nil {
			return clientv3.Op{}, fmt.Errorf("%s: %w", d.describe(), err)
		}
	}
	return checkedOp("delete "+d.key, func() clientv3.Op { return clientv3.OpDelete(d.key, d.opts...) })
}

func (d *deleteValueOp[V]) Cmps() []clientv3.Cmp { return d.appendCmps(nil) }

func (d *deleteValueOp[V]) appendCmps(cmps []clientv3.Cmp) []clientv3.Cmp {
	d.want = expect(d.val)
	return append(cmps, d.want.cmp(d.key))
}

func (d *deleteValueOp[V]) describe() string { return "delete " + d.key }

func (d *deleteValueOp[V]) failure(kv *mvccpb.KeyValue) error {
	return d.want.failure("delete "+d.key, kv)
}

func (d *deleteValueOp[V]) knownFailure() error { return nil } // the stored version is read

func (d *deleteValueOp[V]) unexplained(rev int64, readErr error) error {
	return unexplainedFailure("delete "+d.key, ErrValueVersionMismatch, rev, readErr)
}

func (d *deleteValueOp[V]) UpdateRevision(revision int64) { d.revision = revision }

func (d *deleteValueOp[V]) Revision() int64 { return d.revision }

func (d *deleteValueOp[V]) UpdateCache() {
	if d.cache != nil {
		d.cache.writeDelete(d.key, false, d.revision)
	}
}

func (d *deleteValueOp[V]) txnKey() (kind, key, end string) { return "delete", d.key, "" }
