package storage

// The checks of the clientv3.OpOptions callers pass to ops and watches.
// clientv3's Op constructors panic on options that do not fit an op, and
// silently change a single-key op into a range on others: every op checks
// its caller's options here first and returns an error naming the op and
// key.

import (
	"reflect"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// checkOptions refuses caller options that conflict with the watcher's own
// (it sets the revision and the range) or that do not fit a watch, which
// clientv3's watch would panic on or ignore.
func (w *watcher) checkOptions() error {
	o := inspectOptions(w.opts)
	switch {
	case o.Rev() != 0 || o.RangeBytes() != nil || o.IsOptsWithPrefix() || o.IsOptsWithFromKey():
		return invalidf("%s: invalid option: the watch sets its own revision and range", w.what)
	case o.Limit() != 0 || o.IsSerializable() || o.IsCountOnly() || o.IsKeysOnly() ||
		o.MinModRev() != 0 || o.MaxModRev() != 0 || o.MinCreateRev() != 0 || o.MaxCreateRev() != 0:
		return invalidf("%s: invalid option: only watch options apply", w.what)
	case setsLease(w.opts):
		return invalidf("%s: invalid option: only watch options apply (a lease)", w.what)
	case setsSort(w.opts):
		return invalidf("%s: invalid option: only watch options apply (a sort order)", w.what)
	}
	return nil
}

// checkedOp builds a clientv3 op, turning the panics of clientv3's Op
// constructors on options that do not fit the op (a lease on a delete, a
// revision on a put, ...) into an error naming the op and key.
func checkedOp(what string, build func() clientv3.Op) (op clientv3.Op, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = invalidf("%s: invalid option: %v", what, r)
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

// checkSingleKeyOptions refuses a range option (WithPrefix, WithRange,
// WithFromKey) on an op that names one key: clientv3 would make it a range
// delete (of the whole keyspace for the empty key) that neither a Txn's key
// checks nor a Cache's bookkeeping see.
func checkSingleKeyOptions(what string, opts []clientv3.OpOption) error {
	if o := inspectOptions(opts); o.RangeBytes() != nil || o.IsOptsWithFromKey() || o.IsOptsWithPrefix() {
		return invalidf("%s: invalid option: a range conflicts with the op's own key", what)
	}
	return nil
}

// checkReadOptions refuses caller options that would change what a read op
// returns beyond its documented shape: a range on an op that names its keys
// (or a second range on a prefix or range op), and count-only or keys-only
// reads, which leave no value to decode.
func checkReadOptions(what string, opts []clientv3.OpOption) error {
	o := inspectOptions(opts)
	switch {
	case o.RangeBytes() != nil || o.IsOptsWithFromKey() || o.IsOptsWithPrefix():
		return invalidf("%s: invalid option: a range conflicts with the op's own keys", what)
	case o.IsCountOnly() || o.IsKeysOnly():
		return invalidf("%s: invalid option: count-only and keys-only reads return no values", what)
	}
	return nil
}

// checkTTL refuses a ttl that no lease can carry: what names the op and key.
func checkTTL(what string, ttl time.Duration) error {
	switch {
	case ttl <= 0:
		return invalidf("%s: TTL must be positive, got %v", what, ttl)
	case ttl > maxLeaseTTL*time.Second:
		return invalidf("%s: TTL %v exceeds etcd's maximum lease TTL of %ds", what, ttl, int64(maxLeaseTTL))
	}
	return nil
}

// setsSort reports whether opts ask for a sort order, which clientv3.Op has
// no accessor for either. A sort option replaces any earlier one, so opts
// applied after a seed order give the same op as opts alone exactly when
// they set an order of their own.
func setsSort(opts []clientv3.OpOption) bool {
	seeded := append([]clientv3.OpOption{clientv3.WithSort(clientv3.SortByVersion, clientv3.SortDescend)}, opts...)
	return reflect.DeepEqual(inspectOptions(opts), inspectOptions(seeded))
}
