package storage

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A failed transaction is explained by one read of the compared keys at its
// revision (the transaction itself carries no else branch: etcd writes a
// request whole to its log, so 100 reads in an else branch made a txn of
// 100 creates 1.25x the minimal one on the path that succeeds). The package's own conditional ops
// keep, beside the one compare each sends, what it expects (an expectation),
// and judge it against their key as read. A compare from an op written
// elsewhere is judged as etcd judges it (etcd's applyCompare), which needs
// the compare's target, result and operand: clientv3.Cmp is a pb.Compare up
// to etcd 3.6 and opaque from 3.7 on, so compareOf reads it either way.
//
// Letting etcd judge a foreign compare, with a nested txn of that compare
// alone in the else branch, was tried and undone: etcd gives nested txns
// only the op budget the top level leaves (--max-txn-ops minus its largest
// list), so a txn of 128 compares or ops was refused whether or not its
// compares held.

// expectation is the one compare a conditional op sends: the key's mod
// revision when the value carries one (RevisionedValue), else its version.
type expectation struct {
	modRevision int64 // compared when > 0
	version     int64
}

func expect(v Value) expectation {
	return expectation{modRevision: modRevisionOf(v), version: v.Version()}
}

func (e expectation) cmp(key string) clientv3.Cmp {
	if e.modRevision > 0 {
		// An equal mod revision implies an equal version, and a re-created
		// key always has a new one: safe against delete and re-create.
		return clientv3.Compare(clientv3.ModRevision(key), "=", e.modRevision)
	}
	return clientv3.Compare(clientv3.Version(key), "=", e.version)
}

// failure says why the compare did not hold against kv, the key as read at
// the failed txn's revision (nil when it does not exist); nil if it held.
func (e expectation) failure(what string, kv *mvccpb.KeyValue) error {
	var version, modRevision int64 // a missing key has both 0
	if kv != nil {
		version, modRevision = kv.Version, kv.ModRevision
	}
	switch {
	case e.modRevision > 0 && modRevision != e.modRevision:
		return fmt.Errorf("%s: mod revision %d, stored %d: %w", what, e.modRevision, modRevision, ErrValueVersionMismatch)
	case e.modRevision == 0 && version != e.version:
		return fmt.Errorf("%s: version %d, stored %d: %w", what, e.version, version, ErrValueVersionMismatch)
	}
	return nil
}

// unexplainedFailure is the failure of what's compare when the read that
// would say more failed: the sentinel its failed compare implies, and the
// read's error.
func unexplainedFailure(what string, sentinel error, rev int64, readErr error) error {
	return fmt.Errorf("%s: %w (reading the key at revision %d to say more: %w)", what, sentinel, rev, readErr)
}

// txnCmps are a transaction's compares in the order sent.
type txnCmps struct {
	all     []clientv3.Cmp
	foreign []cmpSpan // the compares of ops from elsewhere, in op order
}

// cmpSpan says that all[from:to] are the compares of ops[op].
type cmpSpan struct{ op, from, to int }

// collectCmps asks every op for its compares, once.
func collectCmps(ops []TxnOperation) txnCmps {
	var c txnCmps
	if len(ops) > 1 {
		// Sized for one compare per op, as the package's conditional ops
		// have; a lone op, often a plain put, needs no slice at all.
		c.all = make([]clientv3.Cmp, 0, len(ops))
	}
	for i, op := range ops {
		if a, ours := op.(cmpAppender); ours {
			c.all = a.appendCmps(c.all)
			continue
		}
		cmps := op.Cmps()
		if _, ours := op.(explainer); !ours && len(cmps) > 0 {
			c.foreign = append(c.foreign, cmpSpan{op: i, from: len(c.all), to: len(c.all) + len(cmps)})
		}
		c.all = append(c.all, cmps...)
	}
	return c
}

// cmpRange is what a compare is on: a key, or the range [key, end).
type cmpRange struct{ key, end string }

// readOps returns the reads that explain a failure: one read of each key or
// range compared, once each, at rev, which gives the stored versions and
// revisions. It reads keys only, unless a foreign compare on it is on the
// value. A range is read whole, as etcd compares every key in it. There is
// a read per compare at most, so the reads stay within --max-txn-ops when
// the compares do.
func (c txnCmps) readOps(rev int64) []clientv3.Op {
	reads := make([]cmpRange, 0, len(c.all))
	needValue := make(map[cmpRange]bool, len(c.all))
	add := func(r cmpRange, value bool) {
		if _, seen := needValue[r]; !seen {
			reads = append(reads, r)
		}
		needValue[r] = needValue[r] || value
	}
	spans := c.foreign
	for j := range c.all {
		for len(spans) > 0 && j >= spans[0].to {
			spans = spans[1:]
		}
		if len(spans) == 0 || j < spans[0].from {
			add(cmpRange{key: string(c.all[j].KeyBytes())}, false) // ours
			continue
		}
		if pc := compareOf(&c.all[j]); pc != nil {
			add(cmpRange{string(pc.GetKey()), string(pc.GetRangeEnd())}, pc.GetTarget() == pb.Compare_VALUE)
		}
	}
	ops := make([]clientv3.Op, len(reads))
	for i, r := range reads {
		ops[i] = r.read(rev, needValue[r])
	}
	return ops
}

// read returns the read of r at rev, of its keys only unless value.
func (r cmpRange) read(rev int64, value bool) clientv3.Op {
	opts := make([]clientv3.OpOption, 0, 3) // on the stack, however many are appended
	opts = append(opts, clientv3.WithRev(rev))
	if r.end != "" {
		opts = append(opts, clientv3.WithRange(r.end))
	}
	if !value {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	return clientv3.OpGet(r.key, opts...)
}

// explain builds the error of a transaction that failed at rev from a read
// of the compared keys at rev (readOps): each failed op, and why. An op from
// elsewhere is named by the kind and key of the op it sent, once per failed
// compare. If the read fails, the error names the compared keys; a lone op
// of ours still gives its sentinel, which its failed compare implies. A lone
// create needs no read.
func (c txnCmps) explain(ctx context.Context, client *clientv3.Client, ops []TxnOperation, clientOps []clientv3.Op, rev int64) error {
	// A lone op of ours sent the only compare: it failed, which is all
	// its sentinel needs, and all a create has to say.
	lone, _ := ops[0].(explainer)
	if len(ops) > 1 {
		lone = nil
	}
	if lone != nil {
		if err := lone.knownFailure(); err != nil {
			return &txnFailedError{failed: []error{err}}
		}
	}
	resp, err := client.Txn(ctx).Then(c.readOps(rev)...).Commit()
	if err != nil {
		if lone != nil {
			return &txnFailedError{failed: []error{lone.unexplained(rev, err)}}
		}
		keys := make([]string, 0, len(c.all))
		for j := range c.all {
			if k := string(c.all[j].KeyBytes()); !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		return &txnFailedError{unexplained: fmt.Errorf("a compare on %s failed; reading them at revision %d to say which: %w",
			strings.Join(keys, ", "), rev, err)}
	}
	return c.explainReads(ops, clientOps, resp.Responses)
}

// explainReads builds the error of a failed transaction from the reads of
// readOps: each failed op, and why.
func (c txnCmps) explainReads(ops []TxnOperation, clientOps []clientv3.Op, reads []*pb.ResponseOp) error {
	stored := make(map[string]*mvccpb.KeyValue)
	for _, r := range reads {
		for _, kv := range r.GetResponseRange().GetKvs() {
			// A key read twice, alone and in a range, keeps the read with
			// its value, if one had it.
			if old := stored[string(kv.Key)]; old == nil || len(old.Value) == 0 {
				stored[string(kv.Key)] = kv
			}
		}
	}
	var failed []error
	spans := c.foreign // the spans of the ops still to come
	for i, op := range ops {
		if e, ok := op.(explainer); ok {
			if err := e.failure(stored[cmpKey(op)]); err != nil {
				failed = append(failed, err)
			}
			continue
		}
		if len(spans) == 0 || spans[0].op != i {
			continue // sent no compare
		}
		for j := spans[0].from; j < spans[0].to; j++ {
			if pc := compareOf(&c.all[j]); pc == nil || !cmpHolds(pc, stored) {
				failed = append(failed, fmt.Errorf("%s %s: compare on %s failed",
					opKind(clientOps[i]), clientOps[i].KeyBytes(), c.all[j].KeyBytes()))
			}
		}
		spans = spans[1:]
	}
	return &txnFailedError{failed: failed}
}

// cmpKey is the key the compare of one of our ops is on: its own.
func cmpKey(op TxnOperation) string {
	if k, ok := op.(txnKeyer); ok {
		_, key, _ := k.txnKey()
		return key
	}
	return ""
}

// compareOf returns the request a compare sends, without naming a field of
// clientv3.Cmp, so that it compiles against etcd 3.6 and 3.7 alike: from 3.7
// on Cmp wraps a *pb.Compare and gives it by GetCompare; up to 3.6 Cmp is
// itself a pb.Compare (type Cmp pb.Compare), so reflect converts the pointer,
// as Go converts between pointers to types of one underlying type. nil if
// neither holds (a later clientv3). The result must not be modified.
func compareOf(c *clientv3.Cmp) *pb.Compare {
	if g, ok := any(c).(interface{ GetCompare() *pb.Compare }); ok {
		return g.GetCompare()
	}
	v, t := reflect.ValueOf(c), reflect.TypeFor[*pb.Compare]()
	if !v.CanConvert(t) {
		return nil
	}
	pc, _ := v.Convert(t).Interface().(*pb.Compare)
	return pc
}

// cmpHolds evaluates a compare against the keys as read, as etcd does: a
// compare on a range holds if it holds for every key in it; on a key or
// range that holds no key, a value compare fails and the others compare
// against zero.
func cmpHolds(c *pb.Compare, stored map[string]*mvccpb.KeyValue) bool {
	key, end := string(c.GetKey()), string(c.GetRangeEnd())
	var kvs []*mvccpb.KeyValue
	switch {
	case end == "":
		if kv := stored[key]; kv != nil {
			kvs = append(kvs, kv)
		}
	default:
		for k, kv := range stored {
			if k >= key && (end == "\x00" || k < end) {
				kvs = append(kvs, kv)
			}
		}
	}
	if len(kvs) == 0 {
		if c.GetTarget() == pb.Compare_VALUE {
			return false
		}
		return cmpKVHolds(c, &mvccpb.KeyValue{})
	}
	for _, kv := range kvs {
		if !cmpKVHolds(c, kv) {
			return false
		}
	}
	return true
}

func cmpKVHolds(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var r int
	switch c.GetTarget() {
	case pb.Compare_VERSION:
		r = cmp.Compare(kv.Version, c.GetVersion())
	case pb.Compare_CREATE:
		r = cmp.Compare(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		r = cmp.Compare(kv.ModRevision, c.GetModRevision())
	case pb.Compare_LEASE:
		r = cmp.Compare(kv.Lease, c.GetLease())
	case pb.Compare_VALUE:
		r = bytes.Compare(kv.Value, c.GetValue())
	}
	switch c.GetResult() {
	case pb.Compare_EQUAL:
		return r == 0
	case pb.Compare_GREATER:
		return r > 0
	case pb.Compare_LESS:
		return r < 0
	case pb.Compare_NOT_EQUAL:
		return r != 0
	}
	return true // as etcd: an unknown result holds
}
