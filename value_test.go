package storage_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// compressThreshold is the JSON size from which values are stored gzipped:
// part of the stored format other services share (SEMANTICS.md).
const compressThreshold = 2048

// hostOfJSONSize returns a host whose JSON encoding is exactly n bytes.
func hostOfJSONSize(t *testing.T, n int) *host {
	t.Helper()
	h := &host{Port: 1}
	empty, err := json.Marshal(h)
	require.NoError(t, err)
	h.Name = strings.Repeat("x", n-len(empty))
	data, err := json.Marshal(h)
	require.NoError(t, err)
	require.Len(t, data, n)
	return h
}

// storedBytes returns the bytes etcd holds for key.
func storedBytes(t *testing.T, client *clientv3.Client, key string) []byte {
	t.Helper()
	return rawKV(t, client, key).Value
}

// gzipBytes compresses data with the standard library, as another writer
// of the same keys would.
func gzipBytes(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	require.NoError(t, err)
	_, err = zw.Write(data)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

func gunzipBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	require.NoError(t, err)
	out, err := io.ReadAll(zr)
	require.NoError(t, err)
	return out
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	require.NoError(t, err)
	return data
}

func TestStoredBytes(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("values below 2048 bytes are stored as plain JSON", func(t *testing.T) {
		for _, size := range []int{30, 1000, compressThreshold - 1} {
			key := storage.Key("plain", fmt.Sprint(size))
			h := hostOfJSONSize(t, size)
			require.NoError(t, storage.NewPutOp(client, key, h).Exec(ctx))

			raw := storedBytes(t, client, key)
			require.Equal(t, mustJSON(t, h), raw, "a %d-byte value is its JSON text", size)
			require.True(t, json.Valid(raw))
		}
	})

	t.Run("values of 2048 bytes and more are stored gzip-compressed", func(t *testing.T) {
		for _, size := range []int{compressThreshold, compressThreshold + 1, 64 << 10} {
			key := storage.Key("gzip", fmt.Sprint(size))
			h := hostOfJSONSize(t, size)
			require.NoError(t, storage.NewPutOp(client, key, h).Exec(ctx))

			raw := storedBytes(t, client, key)
			require.True(t, bytes.HasPrefix(raw, []byte{0x1f, 0x8b}), "a %d-byte value starts with the gzip magic", size)
			require.Less(t, len(raw), size, "the repetitive %d-byte value shrinks", size)
			require.Equal(t, mustJSON(t, h), gunzipBytes(t, raw), "compress/gzip reads back the JSON")

			got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, hostWithVersion(h.Name, h.Port, 1), got)
		}
	})

	t.Run("the version is never part of the JSON", func(t *testing.T) {
		key := storage.Key("unversioned")
		h := hostWithVersion("a", 1, 41)
		require.NoError(t, storage.NewPutOp(client, key, h).Exec(ctx))
		require.JSONEq(t, `{"name":"a","port":1}`, string(storedBytes(t, client, key)))

		r := &record{Name: "r", Count: 2}
		r.SetVersion(9)
		require.NoError(t, storage.NewPutOp(client, key+"-record", r).WithUpdatedVersion().Exec(ctx))
		require.NotZero(t, r.ModRevision())
		require.JSONEq(t, `{"name":"r","count":2}`, string(storedBytes(t, client, key+"-record")))
	})

	t.Run("values written by another writer read back", func(t *testing.T) {
		small := hostWithVersion("small", 80, 1)
		large := hostOfJSONSize(t, 4096)
		large.SetVersion(1)
		cases := []struct {
			name  string
			bytes []byte
			want  *host
		}{
			{"plain JSON", []byte(`{"name":"small","port":80}`), small},
			{"plain JSON with spaces and unknown fields", []byte(" {\"port\": 80, \"other\": [1, 2], \"name\": \"small\"}\n"), small},
			{"small gzip", gzipBytes(t, mustJSON(t, small), gzip.DefaultCompression), small},
			{"large gzip", gzipBytes(t, mustJSON(t, large), gzip.BestCompression), large},
			{"large plain JSON", mustJSON(t, large), large},
			{"uncompressed gzip", gzipBytes(t, mustJSON(t, large), gzip.NoCompression), large},
			{"gzip of two members", append(
				gzipBytes(t, []byte(`{"name":"sm`), gzip.BestSpeed),
				gzipBytes(t, []byte(`all","port":80}`), gzip.BestSpeed)...), small},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				prefix := storage.Prefix("foreign", tc.name)
				key := prefix + "k"
				put(t, client, key, string(tc.bytes))

				got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
				require.NoError(t, err)
				require.Equal(t, tc.want, got)

				all, err := storage.NewGetPrefixOp[*host](client, prefix).Exec(ctx)
				require.NoError(t, err)
				require.Equal(t, []*host{tc.want}, all)
				multi, err := storage.NewGetMultipleOp[*host](client, []string{key}).Exec(ctx)
				require.NoError(t, err)
				require.Equal(t, []*host{tc.want}, multi)
			})
		}
	})

	t.Run("bytes that cannot be decoded give an error naming the key", func(t *testing.T) {
		valid := mustJSON(t, hostOfJSONSize(t, 4096))
		gz := gzipBytes(t, valid, gzip.DefaultCompression)
		cases := []struct {
			name  string
			bytes []byte
		}{
			{"empty", nil},
			{"bad JSON", []byte(`{"name":`)},
			{"wrong JSON type", []byte(`{"name":7}`)},
			{"JSON array", []byte(`[1,2]`)},
			{"JSON null", []byte(`null`)},
			{"JSON null with spaces", []byte(" null\n")},
			{"gzip magic alone", []byte{0x1f, 0x8b}},
			{"truncated gzip", gz[:len(gz)/2]},
			{"gzip without its trailer", gz[:len(gz)-4]},
			{"gzip with a bad checksum", append(gz[:len(gz)-8:len(gz)-8], 0, 0, 0, 0, 0, 0, 0, 0)},
			{"gzip of bad JSON", gzipBytes(t, []byte(`{"name":`), gzip.DefaultCompression)},
			{"gzip of JSON null", gzipBytes(t, []byte(`null`), gzip.DefaultCompression)},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				prefix := storage.Prefix("corrupt", tc.name)
				key := prefix + "k"
				put(t, client, key, string(tc.bytes))
				want := `failed to decode "` + key + `"`

				var got *host
				require.NotPanics(t, func() {
					var err error
					got, err = storage.NewGetOp[*host](client, key).Exec(ctx)
					require.ErrorContains(t, err, want)
				})
				require.Nil(t, got)

				all, err := storage.NewGetPrefixOp[*host](client, prefix).Exec(ctx)
				require.ErrorContains(t, err, want)
				require.Nil(t, all)

				multi, err := storage.NewGetMultipleOp[*host](client, []string{key}).Exec(ctx)
				require.ErrorContains(t, err, want)
				require.Nil(t, multi)

				ok, err := storage.NewExistsOp(client, key).Exec(ctx)
				require.NoError(t, err)
				require.True(t, ok, "exists reads no value, so bad bytes do not matter")
			})
		}
	})

	t.Run("a gzip bomb is refused naming the key", func(t *testing.T) {
		// 200 MiB of JSON whitespace before a valid value: without the 64 MiB
		// inflate limit this decodes fine, so only the limit refuses it. It is
		// built as 200 gzip members of 1 MiB each (RFC 1952 allows a series
		// of members; the case above shows they are read): one 200 MiB member
		// takes ~15 s to compress under -race.
		member := gzipBytes(t, bytes.Repeat([]byte(" "), 1<<20), gzip.BestCompression)
		bomb := bytes.Repeat(member, 200)
		bomb = append(bomb, gzipBytes(t, []byte(`{"name":"bomb","port":1}`), gzip.BestCompression)...)
		require.Less(t, len(bomb), 1<<20, "the bomb is small enough to store")

		key := storage.Key("bomb")
		put(t, client, key, string(bomb))
		var got *host
		var err error
		require.NotPanics(t, func() {
			got, err = storage.NewGetOp[*host](client, key).Exec(ctx)
		})
		require.ErrorContains(t, err, `failed to decode "`+key+`"`)
		var syntaxErr *json.SyntaxError
		require.False(t, errors.As(err, &syntaxErr), "refused for its size, not as JSON cut short: %v", err)
		require.Nil(t, got)
	})
}

func TestDecodeGetResponse(t *testing.T) {
	t.Parallel()

	kv := func(key string, value []byte, version, modRevision int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(key), Value: value, Version: version, ModRevision: modRevision, CreateRevision: 1}
	}

	t.Run("a response without a header decodes and sets each version", func(t *testing.T) {
		resp := &clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{
			kv("/a", []byte(`{"name":"a","port":1}`), 3, 10),
			kv("/b", gzipBytes(t, mustJSON(t, &host{Name: "b", Port: 2}), gzip.BestSpeed), 1, 11),
		}}
		got, err := storage.DecodeGetResponse[*host](resp)
		require.NoError(t, err)
		require.Equal(t, []*host{hostWithVersion("a", 1, 3), hostWithVersion("b", 2, 1)}, got)
	})

	t.Run("a RevisionedValue gets the mod revision too", func(t *testing.T) {
		resp := &clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{kv("/a", []byte(`{"name":"a","count":5}`), 4, 17)}}
		got, err := storage.DecodeGetResponse[*record](resp)
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, "a", got[0].Name)
		require.Equal(t, 5, got[0].Count)
		require.Equal(t, int64(4), got[0].Version())
		require.Equal(t, int64(17), got[0].ModRevision())
	})

	t.Run("an empty or nil response gives no values and no error", func(t *testing.T) {
		for _, resp := range []*clientv3.GetResponse{nil, {}, {Kvs: []*mvccpb.KeyValue{}}} {
			got, err := storage.DecodeGetResponse[*host](resp)
			require.NoError(t, err)
			require.Empty(t, got)
		}
	})

	t.Run("a value that cannot be decoded fails the call naming its key", func(t *testing.T) {
		resp := &clientv3.GetResponse{Kvs: []*mvccpb.KeyValue{
			kv("/good", []byte(`{"name":"a"}`), 1, 2),
			kv("/bad", []byte(`{"name"`), 1, 3),
		}}
		got, err := storage.DecodeGetResponse[*host](resp)
		require.ErrorContains(t, err, `failed to decode "/bad"`)
		require.Nil(t, got)
	})
}

func TestRevisionedValue(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("a read sets the key's mod revision", func(t *testing.T) {
		key := storage.Key("rv", "read")
		put(t, client, key, `{"name":"a"}`)
		rev := put(t, client, key, `{"name":"b"}`)

		got, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(2), got.Version())
		require.Equal(t, rev, got.ModRevision())

		all, err := storage.NewGetPrefixOp[*record](client, storage.Prefix("rv")).Exec(ctx)
		require.NoError(t, err)
		require.Len(t, all, 1)
		require.Equal(t, rev, all[0].ModRevision())
	})

	t.Run("a write with WithUpdatedVersion sets the write's revision", func(t *testing.T) {
		key := storage.Key("rv", "write")
		r := &record{Name: "a"}
		op := storage.NewCreateOp(client, key, r).WithUpdatedVersion()
		require.NoError(t, op.Exec(ctx))
		require.Equal(t, op.Revision(), r.ModRevision())

		r.Count++
		op = storage.NewUpdateOp(client, key, r).WithUpdatedVersion()
		require.NoError(t, op.Exec(ctx))
		require.Equal(t, op.Revision(), r.ModRevision())
		require.Equal(t, int64(2), r.Version())
		require.Equal(t, op.Revision(), rawKV(t, client, key).ModRevision)
	})

	t.Run("SetVersion forgets the mod revision", func(t *testing.T) {
		r := &record{}
		r.SetVersion(3)
		require.Zero(t, r.ModRevision())

		key := storage.Key("rv", "forget")
		put(t, client, key, `{"name":"a"}`)
		got, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		require.NotZero(t, got.ModRevision())
		got.SetVersion(got.Version())
		require.Zero(t, got.ModRevision())
		require.Equal(t, int64(1), got.Version())
	})
}

// TestABA shows what a version compare can and cannot tell: etcd resets a
// key's version when it is deleted, so a value read before a delete carries
// the same version as the re-created key.
func TestABA(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	ctx := testContext(t)

	t.Run("a stale RevisionedValue never overwrites or deletes a re-created key", func(t *testing.T) {
		key := storage.Key("aba", "record")
		require.NoError(t, storage.NewCreateOp(client, key, &record{Name: "first"}).Exec(ctx))
		stale, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)

		n, err := storage.NewDeleteKeyOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		require.NoError(t, storage.NewCreateOp(client, key, &record{Name: "second"}).Exec(ctx))
		fresh, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, stale.Version(), fresh.Version(), "the versions match: only the mod revision tells them apart")

		stale.Name = "stale"
		err = storage.NewUpdateOp(client, key, stale).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
		require.ErrorContains(t, err, key)

		err = storage.NewDeleteValueOp(client, key, stale).Exec(ctx)
		require.ErrorIs(t, err, storage.ErrValueVersionMismatch)
		require.ErrorContains(t, err, key)

		got, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, "second", got.Name)
		require.Equal(t, fresh.ModRevision(), got.ModRevision())
	})

	t.Run("a fresh RevisionedValue updates and deletes", func(t *testing.T) {
		key := storage.Key("aba", "record-fresh")
		require.NoError(t, storage.NewCreateOp(client, key, &record{Name: "first"}).Exec(ctx))
		r, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		r.Count = 1
		require.NoError(t, storage.NewUpdateOp(client, key, r).WithUpdatedVersion().Exec(ctx))
		require.NoError(t, storage.NewDeleteValueOp(client, key, r).Exec(ctx))
		ok, err := storage.NewExistsOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.False(t, ok)
	})

	t.Run("a RevisionedValue after SetVersion is compared on version", func(t *testing.T) {
		key := storage.Key("aba", "record-setversion")
		require.NoError(t, storage.NewCreateOp(client, key, &record{Name: "first"}).Exec(ctx))
		stale, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		_, err = storage.NewDeleteKeyOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, storage.NewCreateOp(client, key, &record{Name: "second"}).Exec(ctx))

		stale.SetVersion(stale.Version()) // forget the mod revision: ask for a version compare
		stale.Name = "stale"
		require.NoError(t, storage.NewUpdateOp(client, key, stale).Exec(ctx))
		got, err := storage.NewGetOp[*record](client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, "stale", got.Name)
	})

	t.Run("a stale StoredValue overwrites a re-created key, as in the original", func(t *testing.T) {
		key := storage.Key("aba", "host")
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "first"}).Exec(ctx))
		stale, err := storage.NewGetOp[*host](client, key).Exec(ctx)
		require.NoError(t, err)
		_, err = storage.NewDeleteKeyOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "second"}).Exec(ctx))

		stale.Name = "stale"
		require.NoError(t, storage.NewUpdateOp(client, key, stale).Exec(ctx))
		got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
		require.NoError(t, err)
		require.Equal(t, hostWithVersion("stale", 0, 2), got)

		_, err = storage.NewDeleteKeyOp(client, key).Exec(ctx)
		require.NoError(t, err)
		require.NoError(t, storage.NewCreateOp(client, key, &host{Name: "third"}).Exec(ctx))
		require.NoError(t, storage.NewDeleteValueOp(client, key, hostWithVersion("any", 0, 1)).Exec(ctx),
			"a stale value with the re-created key's version deletes it")
	})

	t.Run("a StoredValue read from etcd equals a hand-built one", func(t *testing.T) {
		key := storage.Key("aba", "deepequal")
		require.NoError(t, storage.NewPutOp(client, key, &host{Name: "db", Port: 5432}).Exec(ctx))
		require.NoError(t, storage.NewPutOp(client, key, &host{Name: "db", Port: 5433}).Exec(ctx))

		got, err := storage.NewGetOp[*host](client, key).Exec(ctx)
		require.NoError(t, err)
		want := &host{Name: "db", Port: 5433}
		want.SetVersion(2)
		require.Equal(t, want, got)

		all, err := storage.NewGetPrefixOp[*host](client, storage.Prefix("aba")).Exec(ctx)
		require.NoError(t, err)
		require.Contains(t, all, want)
	})
}

// rawKV reads key with clientv3 directly.
func rawKV(t *testing.T, client *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := client.Get(testContext(t), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "key %s", key)
	return resp.Kvs[0]
}
