package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/etcdkit/storage"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// jsonValue is a storage.Value holding any JSON document as it is, so the
// library's ops read and write values of every type in its stored format
// (gzip from 2048 bytes on) without storagectl knowing the format.
type jsonValue struct {
	storage.StoredValue
	raw json.RawMessage
}

// MarshalJSON returns the document. encoding/json compacts it, as it would a
// struct's encoding.
func (v *jsonValue) MarshalJSON() ([]byte, error) { return v.raw, nil }

// UnmarshalJSON keeps a copy of the document; encoding/json has checked that
// it is valid JSON before calling it.
func (v *jsonValue) UnmarshalJSON(b []byte) error {
	v.raw = append(v.raw[:0], b...)
	return nil
}

// gzipMagic starts every compressed stored value (RFC 1952).
var gzipMagic = []byte{0x1f, 0x8b}

// item is one stored key with its decoded value, or why it cannot be decoded.
type item struct {
	key         string
	version     int64
	modRevision int64
	stored      int  // length of the stored bytes
	compressed  bool // the stored bytes start with the gzip magic
	value       json.RawMessage
	err         error // non-nil when the stored bytes cannot be decoded
}

// decodeItem decodes kv with the library, one key at a time, so that a value
// that cannot be decoded is reported for its key and the others still are.
func decodeItem(kv *mvccpb.KeyValue) item {
	it := item{
		key:         string(kv.Key),
		version:     kv.Version,
		modRevision: kv.ModRevision,
		stored:      len(kv.Value),
		compressed:  bytes.HasPrefix(kv.Value, gzipMagic),
	}
	values, err := storage.DecodeGetResponse[*jsonValue](&clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{kv}})
	if err != nil {
		it.err = err
		return it
	}
	it.value = values[0].raw
	return it
}

// pageSize is how many keys one request of a prefix scan reads: a large
// prefix is never held in memory, nor sent in one response, at once.
const pageSize = 1000

// scan calls visit for each key of t in key order, as of one revision. Every
// request is bounded by --command-timeout. A single key that does not exist
// is an error wrapping storage.ErrNotFound; an empty prefix is not an error.
func (a *app) scan(ctx context.Context, client *clientv3.Client, t target, visit func(*mvccpb.KeyValue) error) error {
	if !t.prefix {
		resp, err := a.get(ctx, client, t.key)
		if err != nil {
			return fmt.Errorf("get %s: %w", t.key, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("get %s: %w", t.key, storage.ErrNotFound)
		}
		return visit(resp.Kvs[0])
	}
	start, end := t.key, clientv3.GetPrefixRangeEnd(t.key)
	if t.key == "" {
		start, end = "\x00", "\x00" // every key
	}
	var rev int64 // pins every page to the first page's revision
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := a.get(ctx, client, start, opts...)
		if err != nil {
			return fmt.Errorf("get %s: %w", t, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := visit(kv); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00" // the next key after the page
	}
}

// get is one Get under --command-timeout.
func (a *app) get(ctx context.Context, client *clientv3.Client, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel := a.request(ctx)
	defer cancel()
	return client.Get(ctx, key, opts...)
}

// errUndecodable ends a command that listed values of which some could not be
// decoded: each is shown with its key, and the exit code says so.
var errUndecodable = errors.New("could not be decoded")

func undecodable(n, total int) error {
	if total > 0 {
		return fmt.Errorf("%d of %d values %w; each is shown with its key", n, total, errUndecodable)
	}
	return fmt.Errorf("%d %s %w; each is shown with its key", n, plural(int64(n), "value"), errUndecodable)
}
