package storage

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage/internal/observe"
)

// maxGetChunk is how many keys GetMultiple reads per request: etcd's default
// --max-txn-ops. A server with a lower limit makes it halve the chunk.
const maxGetChunk = 128

// GetOp is an operation that returns a single value. Exec returns an error
// wrapping [ErrNotFound] when the key does not exist. With any error Exec
// returns the zero V, nil for a pointer type.
type GetOp[V Value] interface {
	Exec(ctx context.Context) (V, error)
}

// GetMultipleOp is an operation that returns multiple values. An empty
// result is a nil error and no values. With any error Exec returns no
// values.
type GetMultipleOp[V Value] interface {
	Exec(ctx context.Context) ([]V, error)
}

// ExistsOp is an operation that reports whether a key exists.
type ExistsOp interface {
	Exec(ctx context.Context) (bool, error)
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

// getOp implements GetOp.
type getOp[V Value] struct {
	client *clientv3.Client
	key    string
	opts   []clientv3.OpOption
}

var _ GetOp[*StoredValue] = (*getOp[*StoredValue])(nil)

// NewGetOp returns an operation that returns a single value by key. Its Exec
// returns an error wrapping [ErrNotFound] that names the key when the key
// does not exist. Options such as clientv3.WithRev and WithSerializable apply;
// range, count-only and keys-only options are refused with an error.
func NewGetOp[V Value](client *clientv3.Client, key string, options ...clientv3.OpOption) GetOp[V] {
	return &getOp[V]{client: client, key: key, opts: options}
}

func (g *getOp[V]) Exec(ctx context.Context) (_ V, err error) {
	defer startOp(observe.OpGet).done(&err)
	var zero V
	what := "get " + g.key
	if err := checkReadOptions(what, g.opts); err != nil {
		return zero, err
	}
	op, err := checkedOp(what, func() clientv3.Op { return clientv3.OpGet(g.key, g.opts...) })
	if err != nil {
		return zero, err
	}
	resp, err := g.client.Do(ctx, op)
	if err != nil {
		return zero, wrapRequestErr(what, err, 1, 0)
	}
	kvs := resp.Get().Kvs
	if len(kvs) == 0 {
		return zero, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return decodeKV[V](kvs[0])
}

// getRangeOp implements GetMultipleOp for a prefix or a key range.
type getRangeOp[V Value] struct {
	client *clientv3.Client
	op     observe.Op // OpGetPrefix or OpGetRange
	what   string
	start  string
	end    string
	opts   []clientv3.OpOption
}

// NewGetPrefixOp returns an operation that returns multiple values by prefix,
// in key order. A trailing slash is added to a non-empty prefix if missing,
// so "/a" never returns "/ab"; the empty prefix reads the whole keyspace.
func NewGetPrefixOp[V Value](client *clientv3.Client, prefix string, options ...clientv3.OpOption) GetMultipleOp[V] {
	prefix = withTrailingSlash(prefix)
	start, end := prefixRange(prefix)
	return &getRangeOp[V]{client: client, op: observe.OpGetPrefix, what: "get prefix " + prefix, start: start, end: end, opts: options}
}

// NewGetRangeOp returns an operation that returns values in the range
// [start, end), in key order.
func NewGetRangeOp[V Value](client *clientv3.Client, start, end string, options ...clientv3.OpOption) GetMultipleOp[V] {
	return &getRangeOp[V]{client: client, op: observe.OpGetRange, what: fmt.Sprintf("get range [%s, %s)", start, end), start: start, end: end, opts: options}
}

func (g *getRangeOp[V]) Exec(ctx context.Context) (_ []V, err error) {
	defer startOp(g.op).done(&err)
	if err := checkReadOptions(g.what, g.opts); err != nil {
		return nil, err
	}
	opts := append(g.opts[:len(g.opts):len(g.opts)], clientv3.WithRange(g.end))
	op, err := checkedOp(g.what, func() clientv3.Op { return clientv3.OpGet(g.start, opts...) })
	if err != nil {
		return nil, err
	}
	resp, err := g.client.Do(ctx, op)
	if err != nil {
		return nil, wrapRequestErr(g.what, err, 1, 0)
	}
	return DecodeGetResponse[V](resp.Get())
}

// getMultipleOp implements GetMultipleOp for a list of keys.
type getMultipleOp[V Value] struct {
	client *clientv3.Client
	keys   []string
	opts   []clientv3.OpOption
}

// NewGetMultipleOp returns an operation that returns multiple values by key.
// All keys are read at one revision; missing keys are skipped and the values
// keep the order of keys. Keys are read in transactions of at most 128 gets,
// each pinned to the first one's revision; a server with a lower
// --max-txn-ops makes the op use smaller chunks.
func NewGetMultipleOp[V Value](client *clientv3.Client, keys []string, options ...clientv3.OpOption) GetMultipleOp[V] {
	return &getMultipleOp[V]{client: client, keys: keys, opts: options}
}

func (g *getMultipleOp[V]) Exec(ctx context.Context) (_ []V, err error) {
	defer startOp(observe.OpGetMultiple).done(&err)
	what := fmt.Sprintf("get %d keys", len(g.keys))
	if err := checkReadOptions(what, g.opts); err != nil {
		return nil, err
	}
	rev := inspectOptions(g.opts).Rev() // a caller's WithRev pins the first chunk too
	var out []V
	for i, chunk := 0, maxGetChunk; i < len(g.keys); {
		n := min(chunk, len(g.keys)-i)
		resp, err := g.readChunk(ctx, g.keys[i:i+n], rev)
		if errors.Is(err, rpctypes.ErrTooManyOps) && n > 1 {
			chunk = n / 2
			continue
		}
		if err != nil {
			return nil, wrapRequestErr(fmt.Sprintf("%s (at %s)", what, g.keys[i]), err, n, 0)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				v, err := decodeKV[V](kv)
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			}
		}
		i += n
	}
	return out, nil
}

// readChunk reads keys in one transaction, at rev when it is set.
func (g *getMultipleOp[V]) readChunk(ctx context.Context, keys []string, rev int64) (*clientv3.TxnResponse, error) {
	opts := g.opts
	if rev > 0 {
		opts = append(opts[:len(opts):len(opts)], clientv3.WithRev(rev))
	}
	ops := make([]clientv3.Op, len(keys))
	for i, key := range keys {
		op, err := checkedOp("get "+key, func() clientv3.Op { return clientv3.OpGet(key, opts...) })
		if err != nil {
			return nil, err
		}
		ops[i] = op
	}
	return g.client.Txn(ctx).Then(ops...).Commit()
}

// existsOp implements ExistsOp.
type existsOp struct {
	client *clientv3.Client
	key    string
}

var _ ExistsOp = (*existsOp)(nil)

// NewExistsOp returns an operation that reports whether key exists. It reads
// only the count, never the value.
func NewExistsOp(client *clientv3.Client, key string) ExistsOp {
	return &existsOp{client: client, key: key}
}

func (e *existsOp) Exec(ctx context.Context) (_ bool, err error) {
	defer startOp(observe.OpExists).done(&err)
	resp, err := e.client.Get(ctx, e.key, clientv3.WithCountOnly())
	if err != nil {
		return false, wrapRequestErr("exists "+e.key, err, 1, 0)
	}
	return resp.Count > 0, nil
}
