package storage_test

import (
	"compress/gzip"
	"encoding/json"
	"path"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// decodeOne decodes data as the value of key "/fuzz" (version 3, mod
// revision 7) through a hand-built response without a Header.
func decodeOne[V storage.Value](data []byte) ([]V, error) {
	return storage.DecodeGetResponse[V](&clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{
		{Key: []byte("/fuzz"), Value: data, Version: 3, ModRevision: 7, CreateRevision: 5},
	}})
}

// FuzzDecode: no stored bytes make decoding panic; bytes that do not decode
// give an error naming the key and no values; a decoded value re-encodes to
// JSON that decodes, plain or gzipped, to the same value.
func FuzzDecode(f *testing.F) {
	large := mustJSON(f, &host{Name: strings.Repeat("large ", 700), Port: 4096})
	largeGzip := gzipBytes(f, large, gzip.DefaultCompression)
	for _, seed := range [][]byte{
		nil,
		[]byte(`{}`),
		[]byte(`{"name":"a","port":1}`),
		[]byte(` {"name":"\u00fc\ud800","port":-1,"extra":[1,{"x":null}]} `),
		[]byte(`null`),
		[]byte(`[]`),
		[]byte(`{"name":1}`),
		[]byte(`{"name":"a"`),
		[]byte{0x1f, 0x8b},
		large,
		largeGzip,
		largeGzip[:len(largeGzip)/2],
		gzipBytes(f, []byte(`null`), gzip.BestSpeed),
		gzipBytes(f, []byte(`{"name":"small"}`), gzip.NoCompression),
		append(gzipBytes(f, []byte(`{"name":`), gzip.BestSpeed), gzipBytes(f, []byte(`"two"}`), gzip.BestSpeed)...),
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		hosts, err := decodeOne[*host](data)
		if err != nil {
			require.Nil(t, hosts)
			require.ErrorContains(t, err, `failed to decode "/fuzz"`)
		} else {
			require.Len(t, hosts, 1)
			h := hosts[0]
			require.NotNil(t, h)
			require.Equal(t, int64(3), h.Version())

			encoded, err := json.Marshal(h)
			require.NoError(t, err)
			for _, again := range [][]byte{encoded, gzipBytes(t, encoded, gzip.BestSpeed)} {
				back, err := decodeOne[*host](again)
				require.NoError(t, err)
				require.Equal(t, hosts, back)
			}
		}

		records, err := decodeOne[*record](data)
		if err != nil {
			require.Nil(t, records)
			require.ErrorContains(t, err, `failed to decode "/fuzz"`)
			return
		}
		require.Len(t, records, 1)
		require.Equal(t, int64(3), records[0].Version())
		require.Equal(t, int64(7), records[0].ModRevision())
	})
}

// FuzzKey: Key always gives a clean absolute key and Prefix that key with
// one trailing slash; both are idempotent, and every key built below a
// prefix starts with it.
func FuzzKey(f *testing.F) {
	for _, seed := range [][2]string{
		{"a", "b"}, {"", ""}, {"/", "/"}, {"a//b/../c", ""}, {"..", "a"},
		{"a/", "/b/"}, {"./.", "..."}, {"\x00", "ü"}, {"a b", "c\\d"},
		{"\xff\xfe", "a"}, {"a\x00b", "\xc3"}, {"ab", "\xff"},
	} {
		f.Add(seed[0], seed[1])
	}

	f.Fuzz(func(t *testing.T, a, b string) {
		var key, prefix string
		require.NotPanics(t, func() {
			key = storage.Key(a, b)
			prefix = storage.Prefix(a, b)
		})

		require.True(t, strings.HasPrefix(key, "/"), "Key(%q, %q) = %q is absolute", a, b, key)
		require.Equal(t, path.Clean(key), key, "Key(%q, %q) is clean", a, b)
		require.True(t, strings.HasSuffix(prefix, "/"), "Prefix(%q, %q) = %q ends with a slash", a, b, prefix)
		if key == "/" {
			require.Equal(t, "/", prefix)
		} else {
			require.Equal(t, key+"/", prefix)
		}

		require.Equal(t, key, storage.Key(key), "Key is idempotent")
		require.Equal(t, key, storage.Key(prefix), "Key drops the trailing slash of a prefix")
		require.Equal(t, prefix, storage.Prefix(key))
		require.Equal(t, prefix, storage.Prefix(prefix), "Prefix is idempotent")
		require.Equal(t, key, storage.Key(storage.Key(a), b))
		require.Equal(t, key, storage.Key(storage.Prefix(a), b))

		child := storage.Key(a, b, "child")
		require.True(t, strings.HasPrefix(child, prefix), "%q is below %q", child, prefix)
		require.Equal(t, prefix+"child", child)
	})
}
