package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage/internal/observe"
)

// Txn is a group of operations that will be executed together in a
// transaction. If any of the operations contains a condition, such as the
// CreateOp operation, and that condition fails, the entire transaction fails
// and nothing is written. Each operation in the transaction must operate on a
// unique key.
//
// A Txn is safe for concurrent use: AddOps and Commit may be called from any
// goroutine, and concurrent Commits run one at a time, each with the versions
// the one before wrote back. It can be committed more than once: each Commit
// sends every op as it is at that moment, so after a conflict a caller
// refreshes its values and commits the same Txn again. Refresh them in
// place: an op keeps a pointer to its value, not a copy.
//
// The ops and the values they point to stay the caller's. An op must not run
// concurrently with itself: not Exec'd while a Txn holding it commits, nor
// in two Txns committing at once. A value must not be changed while an op
// holding it runs. Nor may it be read while an op that writes its version
// back runs, which is an op with WithUpdatedVersion or a Cache's put.
type Txn interface {
	// AddOps adds ops to the transaction; ops added after a Commit join the
	// next one.
	AddOps(ops ...TxnOperation)
	// Commit runs all ops in one etcd transaction. It returns nil for an
	// empty transaction without sending anything.
	//
	// Before any request, lease grants included, it refuses two ops on one
	// key, or a put inside a prefix another op deletes, with an error
	// wrapping [ErrDuplicateKeysInTransaction]. The error lists each
	// offending op by kind and key ("put /a/x, delete /a/"). No op's
	// Revision changes then. Prefix deletes that overlap are allowed, as
	// etcd allows them.
	//
	// When a compare fails, nothing is written, and the error wraps
	// [ErrOperationConstraintViolated] and each failed op's own error, so
	// errors.Is finds [ErrAlreadyExists] or [ErrValueVersionMismatch]. Its
	// message names every failed op and why, learned from one read of the
	// compared keys at the failed transaction's revision, which sees what its
	// compares saw. An op without a compare of its own is never named.
	// Should that read fail (etcd compacted past the revision meanwhile, the
	// context ended), the error still wraps ErrOperationConstraintViolated,
	// names the compared keys, and wraps the read's error; a transaction of
	// one of this package's ops still wraps that op's sentinel, which its
	// failed compare implies. Every op gets the response's revision either
	// way.
	//
	// A transaction beyond a limit fails with an error that names the limit
	// and gives the numbers of ops and compares. The limits are the server's
	// operation limit, its request size limit and the client's message size
	// limit. The operation limit is etcd's --max-txn-ops, 128 by default; it
	// counts ops and compares separately.
	//
	// After success, versions are written back for the ops with
	// WithUpdatedVersion and for every Cache's put. A Cache's ops then
	// update their cache.
	Commit(ctx context.Context) error
}

type txn struct {
	client *clientv3.Client

	// commitMu is held for a whole Commit: the ops' fields (bytes sent,
	// compares, revisions, versions written back) are written while it runs.
	// It is taken before mu.
	commitMu sync.Mutex

	mu  sync.Mutex // protects ops
	ops []TxnOperation
}

var _ Txn = (*txn)(nil)

// NewTxn returns a transaction over ops; more can be added with AddOps.
func NewTxn(client *clientv3.Client, ops ...TxnOperation) Txn {
	return &txn{client: client, ops: slices.Clone(ops)}
}

func (t *txn) AddOps(ops ...TxnOperation) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ops = append(t.ops, ops...)
}

func (t *txn) Commit(ctx context.Context) (err error) {
	defer startOp(observe.OpTxn).done(&err)
	t.commitMu.Lock()
	defer t.commitMu.Unlock()
	t.mu.Lock()
	// A snapshot without a copy: AddOps only appends, which never writes the
	// elements the snapshot holds; the cap keeps an append to the snapshot
	// from writing into t.ops.
	ops := t.ops[:len(t.ops):len(t.ops)]
	t.mu.Unlock()
	return commit(ctx, t.client, ops)
}

// The package's own ops implement these; ops from elsewhere are handled
// through TxnOperation alone.
type (
	// txnKeyer gives the op's kind ("put", "delete", "get") and key range
	// without building a request (end is "" for a single key).
	txnKeyer interface {
		txnKey() (kind, key, end string)
	}
	// describer names the op and key for error messages ("update /a").
	describer interface {
		describe() string
	}
	// explainer says why the op's compare failed, given the compared key as
	// read at the failed txn's revision (nil when it does not exist). When
	// the op's own compare is the one that failed, knownFailure says why
	// without that read if it can (a create: the key exists), else nil; and
	// should the read fail, unexplained gives the op's sentinel with the
	// read's error.
	explainer interface {
		failure(kv *mvccpb.KeyValue) error
		knownFailure() error
		unexplained(rev int64, readErr error) error
	}
	// cmpAppender appends what Cmps returns to a request's compares. It
	// spares the slice Cmps allocates, one per conditional op of a txn.
	// Every cmpAppender is an explainer (conditional, asserted below).
	cmpAppender interface {
		appendCmps(cmps []clientv3.Cmp) []clientv3.Cmp
	}
	// conditional is what collectCmps takes an op with appendCmps to be.
	conditional interface {
		cmpAppender
		explainer
	}
	// deleteCounter learns how many keys its delete removed.
	deleteCounter interface {
		setDeleted(n int64)
	}
	// keyChecker refuses a key no request may carry (a delete of the whole
	// keyspace), before the ops' keys are compared with each other.
	keyChecker interface {
		checkKey() error
	}
	// leaseUser names the shared lease its last ClientOp attached (0 if
	// none), so that a request refused for a lost lease forgets just that.
	leaseUser interface {
		sharedLease() clientv3.LeaseID
	}
)

var (
	_ conditional = (*putOp[*StoredValue])(nil)
	_ conditional = (*deleteValueOp[*StoredValue])(nil)
)

// execOne runs a single op as its Exec does: a failed compare is returned as
// the op's own error rather than as a transaction's.
func execOne(ctx context.Context, client *clientv3.Client, op TxnOperation) error {
	err := commit(ctx, client, []TxnOperation{op})
	if err == nil {
		// errors.As's target is on the heap: an allocation per op, were it
		// declared on the path that succeeds.
		return nil
	}
	var failed *txnFailedError
	if errors.As(err, &failed) && len(failed.failed) == 1 {
		return failed.failed[0]
	}
	return err
}

// commit runs ops in one request. A request refused because a shared lease
// it carried was gone (revoked by another client, or lost with a restored
// cluster) was not applied, so it is built and sent once more, with fresh
// leases. Only the leases it carried are forgotten: concurrent puts that
// failed with the same lease may have replaced it already, and the lease a
// retry has just granted must not be dropped. A lease of the caller's own is
// not ours to replace: without a shared lease there is no retry.
func commit(ctx context.Context, client *clientv3.Client, ops []TxnOperation) error {
	err := commitOnce(ctx, client, ops)
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return err
	}
	var carried []clientv3.LeaseID
	for _, op := range ops {
		if l, ok := op.(leaseUser); ok && l.sharedLease() != clientv3.NoLease {
			carried = append(carried, l.sharedLease())
		}
	}
	if len(carried) == 0 {
		return err
	}
	leasesOf(client).forget(carried)
	return commitOnce(ctx, client, ops)
}

// commitOnce runs ops in one request: a plain op when there is one op and no
// compare, else a transaction of the compares and the ops alone. Success,
// the common case, costs that one request. A failed compare is explained by
// a second one, which reads the compared keys at the failed transaction's
// revision: the state its compares were judged against (explain).
//
// A lone conditional op (a Create, Update or DeleteValue run by Exec) used
// to read its key in the else branch instead, so that a failure took one
// request. etcd writes a request whole to its log and decodes it on apply,
// whether or not the branch runs: that read made 64 parallel Updates 1.07x
// the minimal txn on the path that succeeds. Its sentinel does not depend on
// the second read: a lone op's failed compare says which it is (unexplained).
func commitOnce(ctx context.Context, client *clientv3.Client, ops []TxnOperation) error {
	if len(ops) == 0 {
		return nil
	}
	clientOps, err := checkDuplicates(ctx, ops)
	if err != nil {
		return err
	}
	for i, op := range ops {
		if _, ok := op.(txnKeyer); !ok {
			continue // built by checkDuplicates
		}
		if clientOps[i], err = op.ClientOp(ctx); err != nil {
			return err
		}
	}
	// Compares are collected after every op was built: building refuses
	// what a compare could not handle, such as a nil value.
	cmps := collectCmps(ops)
	if len(ops) == 1 && len(cmps.all) == 0 {
		return commitOne(ctx, client, ops[0], clientOps[0])
	}

	resp, err := client.Txn(ctx).If(cmps.all...).Then(clientOps...).Commit()
	if err != nil {
		return wrapRequestErr(describeTxn(ops), err, len(clientOps), len(cmps.all))
	}
	for _, op := range ops {
		op.UpdateRevision(resp.Header.Revision)
	}
	if !resp.Succeeded {
		return cmps.explain(ctx, client, ops, clientOps, resp.Header.Revision)
	}
	var prevKVs map[string]*mvccpb.KeyValue // made for the first prev KV: most requests ask for none
	for i, r := range resp.Responses {
		if put := r.GetResponsePut(); put != nil && put.PrevKv != nil {
			if prevKVs == nil {
				prevKVs = make(map[string]*mvccpb.KeyValue)
			}
			prevKVs[string(put.PrevKv.Key)] = put.PrevKv
		}
		if del := r.GetResponseDeleteRange(); del != nil {
			if dc, ok := ops[i].(deleteCounter); ok {
				dc.setDeleted(del.Deleted)
			}
		}
	}
	finish(ops, prevKVs)
	return nil
}

// commitOne sends one unconditional op as a plain request.
func commitOne(ctx context.Context, client *clientv3.Client, op TxnOperation, clientOp clientv3.Op) error {
	resp, err := client.Do(ctx, clientOp)
	if err != nil {
		return wrapRequestErr(describeTxn([]TxnOperation{op}), err, 1, 0)
	}
	var prevKVs map[string]*mvccpb.KeyValue // nil unless the put asked for its prev KV
	switch {
	case resp.Put() != nil:
		op.UpdateRevision(resp.Put().Header.Revision)
		if prev := resp.Put().PrevKv; prev != nil {
			prevKVs = map[string]*mvccpb.KeyValue{string(prev.Key): prev}
		}
	case resp.Del() != nil:
		op.UpdateRevision(resp.Del().Header.Revision)
		if dc, ok := op.(deleteCounter); ok {
			dc.setDeleted(resp.Del().Deleted)
		}
	case resp.Get() != nil:
		op.UpdateRevision(resp.Get().Header.Revision)
	case resp.Txn() != nil:
		op.UpdateRevision(resp.Txn().Header.Revision)
	}
	finish([]TxnOperation{op}, prevKVs)
	return nil
}

// finish writes versions back, then updates caches, after a successful
// request (UpdateRevision has run: versions and caches read the revision).
// prevKVs may be nil, which the package's ops only read; an op from
// elsewhere gets a map, as it always did.
func finish(ops []TxnOperation, prevKVs map[string]*mvccpb.KeyValue) {
	for _, op := range ops {
		vu, ok := op.(VersionUpdater)
		if !ok || !vu.UpdateVersionEnabled() {
			continue
		}
		if _, ours := op.(txnKeyer); !ours && prevKVs == nil {
			prevKVs = make(map[string]*mvccpb.KeyValue)
		}
		vu.UpdateVersion(prevKVs)
	}
	for _, op := range ops {
		if c, ok := op.(CachedTxnOp); ok {
			c.UpdateCache()
		}
	}
}

// checkDuplicates refuses, before any request, a key no request may carry
// (a whole-keyspace delete, refused as that rather than as holding every
// other op's key), then two ops on one key or a put inside a range another op
// deletes (etcd refuses both in one txn; the original library refused any two
// ops on one key). Overlapping deletes are allowed, as etcd allows them. The
// package's ops give their keys directly; other ops are inspected through
// ClientOp, and the ops so built are returned for reuse (nil entries for the
// package's own ops).
func checkDuplicates(ctx context.Context, ops []TxnOperation) ([]clientv3.Op, error) {
	for _, op := range ops {
		if c, ok := op.(keyChecker); ok {
			if err := c.checkKey(); err != nil {
				return nil, err
			}
		}
	}
	clientOps := make([]clientv3.Op, len(ops))
	for i, op := range ops {
		if _, ok := op.(txnKeyer); ok {
			continue
		}
		co, err := op.ClientOp(ctx)
		if err != nil {
			return nil, err
		}
		clientOps[i] = co
	}
	if len(ops) == 1 {
		// Nothing to clash with: an Exec pays for no targets.
		return clientOps, nil
	}
	if err := checkClashes(ops, clientOps); err != nil {
		return nil, err
	}
	return clientOps, nil
}

// checkClashes refuses two ops on one key and a put inside a range another
// op deletes; clientOps holds the built ops from elsewhere (see
// checkDuplicates).
func checkClashes(ops []TxnOperation, clientOps []clientv3.Op) error {
	type target struct{ kind, key, end string }
	targets := make([]target, len(ops))
	for i, op := range ops {
		if k, ok := op.(txnKeyer); ok {
			kind, key, end := k.txnKey()
			targets[i] = target{kind, key, end}
			continue
		}
		co := clientOps[i]
		targets[i] = target{opKind(co), string(co.KeyBytes()), string(co.RangeBytes())}
	}

	var bad []int
	byKey := make(map[string]int, len(ops)) // single-key ops by key
	for i, t := range targets {
		if t.kind == "txn" {
			continue
		}
		if t.end == "" {
			if j, dup := byKey[t.key]; dup {
				bad = append(bad, j, i)
			}
			byKey[t.key] = i
		}
	}
	for i, t := range targets {
		if t.kind != "delete" || t.end == "" {
			continue
		}
		for j, u := range targets {
			inside := u.key >= t.key && (t.end == "\x00" || u.key < t.end)
			if u.kind == "put" && u.end == "" && inside {
				bad = append(bad, i, j)
			}
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	bad = slices.Compact(bad)
	names := make([]string, len(bad))
	for n, i := range bad {
		names[n] = targets[i].kind + " " + targets[i].key
	}
	return fmt.Errorf("txn: %w: %s", ErrDuplicateKeysInTransaction, strings.Join(names, ", "))
}

func opKind(op clientv3.Op) string {
	switch {
	case op.IsPut():
		return "put"
	case op.IsDelete():
		return "delete"
	case op.IsGet():
		return "get"
	}
	return "txn"
}

// describeTxn names a request for errors: the op itself when alone.
func describeTxn(ops []TxnOperation) string {
	if len(ops) == 1 {
		if d, ok := ops[0].(describer); ok {
			return d.describe()
		}
	}
	return fmt.Sprintf("txn of %d ops", len(ops))
}
