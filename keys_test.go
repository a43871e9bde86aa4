package storage_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/storage"
)

func TestKey(t *testing.T) {
	t.Parallel()
	cases := []struct {
		elem []string
		key  string
	}{
		{nil, "/"},
		{[]string{""}, "/"},
		{[]string{"/"}, "/"},
		{[]string{"a"}, "/a"},
		{[]string{"a", "b"}, "/a/b"},
		{[]string{"/a/", "/b/"}, "/a/b"},
		{[]string{"a//b/../c"}, "/a/c"},
		{[]string{"a", "", "b"}, "/a/b"},
		{[]string{"..", "a"}, "/a"},
		{[]string{"a", "..", "..", "b"}, "/b"},
		{[]string{"./a", "."}, "/a"},
		{[]string{"a b", "ü"}, "/a b/ü"},
	}
	for _, tc := range cases {
		require.Equal(t, tc.key, storage.Key(tc.elem...), "Key(%q)", tc.elem)
	}
}

func TestPrefix(t *testing.T) {
	t.Parallel()
	cases := []struct {
		elem   []string
		prefix string
	}{
		{nil, "/"},
		{[]string{""}, "/"},
		{[]string{"/"}, "/"},
		{[]string{"a"}, "/a/"},
		{[]string{"a", "b"}, "/a/b/"},
		{[]string{"a/"}, "/a/"},
		{[]string{"/a//", "b/"}, "/a/b/"},
		{[]string{"a//b/../c"}, "/a/c/"},
		{[]string{"a", ".."}, "/"},
	}
	for _, tc := range cases {
		require.Equal(t, tc.prefix, storage.Prefix(tc.elem...), "Prefix(%q)", tc.elem)
	}
}

// TestPrefixBoundaries: every prefix op adds the trailing slash, so "/a"
// never reaches "/ab/x" or "/ab".
func TestPrefixBoundaries(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	keys := []string{"/a", "/a/x", "/a/y/z", "/a0", "/ab", "/ab/x"}

	for _, prefix := range []string{"/a", "/a/"} {
		t.Run("get prefix "+prefix+" reads only keys below /a/", func(t *testing.T) {
			client := newClient(t)
			for _, key := range keys {
				require.NoError(t, storage.NewPutOp(client, key, &host{Name: key}).Exec(ctx))
			}
			got, err := storage.NewGetPrefixOp[*host](client, prefix).Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, []*host{hostWithVersion("/a/x", 0, 1), hostWithVersion("/a/y/z", 0, 1)}, got)
		})

		t.Run("delete prefix "+prefix+" deletes only keys below /a/", func(t *testing.T) {
			client := newClient(t)
			for _, key := range keys {
				put(t, client, key, "{}")
			}
			op := storage.NewDeletePrefixOp(client, prefix)
			n, err := op.Exec(ctx)
			require.NoError(t, err)
			require.Equal(t, int64(2), n)
			require.Equal(t, []string{"/a", "/a0", "/ab", "/ab/x"}, allKeys(t, client))
		})
	}
}
