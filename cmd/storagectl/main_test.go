package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdkit/storage/storagetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"
)

// TestMain checks that no command leaves a goroutine behind (a client or a
// watch not closed), once every test's etcd server has stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startEtcd starts an etcd server for t and returns its endpoint and a raw
// client to it, for writing and checking what storagectl cannot.
func startEtcd(t *testing.T, opts ...storagetest.Option) (string, *clientv3.Client) {
	t.Helper()
	s, err := storagetest.Start(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s.Endpoints()[0], s.Client()
}

// result is what one storagectl run left.
type result struct {
	code   int
	stdout string
	stderr string
}

// storagectl runs the command line in-process with stdin as its input.
func storagectl(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, strings.NewReader(stdin), &stdout, &stderr)
	t.Logf("storagectl %s: exit %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// ctl runs storagectl against ep with timeouts long enough for a loaded
// machine under -race: these tests are about what the commands do, not about
// time.
func ctl(t *testing.T, ep, stdin string, args ...string) result {
	t.Helper()
	return storagectl(t, stdin, append([]string{"--endpoints", ep, "--dial-timeout", "30s", "--command-timeout", "30s"}, args...)...)
}

// jsonLines parses every line of out as a JSON object.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), "line %q", sc.Text())
		lines = append(lines, m)
	}
	require.NoError(t, sc.Err())
	return lines
}

// bigJSON returns a compressible JSON object of at least n bytes.
func bigJSON(n int) string {
	var items []string
	for i := 0; len(strings.Join(items, ",")) < n; i++ {
		items = append(items, fmt.Sprintf(`{"id":%d,"name":"host-%d","tags":["a","b"]}`, i, i))
	}
	return `{"hosts":[` + strings.Join(items, ",") + `]}`
}

// rawValue reads key with the raw client.
func rawValue(t *testing.T, client *clientv3.Client, key string) []byte {
	t.Helper()
	resp, err := client.Get(t.Context(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "key %s", key)
	return resp.Kvs[0].Value
}

func TestPutAndGet(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)

	t.Run("a small value is stored as plain JSON and read back", func(t *testing.T) {
		r := ctl(t, ep, `{ "name": "db-1", "port": 5432 }`, "put", "/hosts/db-1")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "/hosts/db-1: version 1")
		require.Equal(t, `{"name":"db-1","port":5432}`, string(rawValue(t, client, "/hosts/db-1")))

		r = ctl(t, ep, "", "get", "/hosts/db-1")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "/hosts/db-1 (version 1, mod revision ")
		require.Contains(t, r.stdout, "\n"+`{"name":"db-1","port":5432}`+"\n")

		r = ctl(t, ep, "", "get", "/hosts/db-1", "--pretty")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "{\n  \"name\": \"db-1\",\n  \"port\": 5432\n}\n")
	})

	t.Run("the value can come from an argument or a file", func(t *testing.T) {
		r := ctl(t, ep, "", "put", "/arg", `[1, 2]`)
		require.Equal(t, 0, r.code)
		require.Equal(t, `[1,2]`, string(rawValue(t, client, "/arg")))

		file := t.TempDir() + "/v.json"
		require.NoError(t, writeFile(file, `"from a file"`))
		r = ctl(t, ep, "", "put", "/file", "--from-file", file)
		require.Equal(t, 0, r.code)
		require.Equal(t, `"from a file"`, string(rawValue(t, client, "/file")))
	})

	t.Run("a large value is stored compressed and printed decoded", func(t *testing.T) {
		value := bigJSON(20_000)
		r := ctl(t, ep, value, "put", "/big")
		require.Equal(t, 0, r.code)
		stored := rawValue(t, client, "/big")
		require.True(t, bytes.HasPrefix(stored, []byte{0x1f, 0x8b}), "stored bytes start with % x", stored[:2])
		require.Less(t, len(stored), len(value)/2)

		r = ctl(t, ep, "", "get", "/big")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "gzip)")
		require.Contains(t, r.stdout, "\n"+value+"\n")

		r = ctl(t, ep, "", "get", "/big", "--json")
		require.Equal(t, 0, r.code)
		lines := jsonLines(t, r.stdout)
		require.Len(t, lines, 1)
		require.Equal(t, "/big", lines[0]["key"])
		require.EqualValues(t, 1, lines[0]["version"])
		require.Equal(t, true, lines[0]["compressed"])
		require.EqualValues(t, len(stored), lines[0]["stored_bytes"])
		got, err := json.Marshal(lines[0]["value"])
		require.NoError(t, err)
		require.JSONEq(t, value, string(got))
	})

	t.Run("a value gzipped by another writer is decoded", func(t *testing.T) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, err := zw.Write([]byte(`{"writer":"other"}`))
		require.NoError(t, err)
		require.NoError(t, zw.Close())
		_, err = client.Put(t.Context(), "/other", buf.String())
		require.NoError(t, err)

		r := ctl(t, ep, "", "get", "/other")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "\n"+`{"writer":"other"}`+"\n")
	})

	t.Run("a missing key is an error naming it", func(t *testing.T) {
		r := ctl(t, ep, "", "get", "/missing")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "get /missing: key not found")
	})

	t.Run("input that is not JSON is refused before anything is written", func(t *testing.T) {
		for _, input := range []string{"not json", `{"a":1} {"b":2}`, "", "null"} {
			r := ctl(t, ep, input, "put", "/bad-input")
			require.Equal(t, 1, r.code, "input %q", input)
			require.Contains(t, r.stderr, "put /bad-input: ")
		}
		resp, err := client.Get(t.Context(), "/bad-input")
		require.NoError(t, err)
		require.Empty(t, resp.Kvs)
	})
}

func TestConditionalWrites(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)
	require.Equal(t, 0, ctl(t, ep, `{"v":1}`, "put", "/k", "--create").code)

	t.Run("put --if-version with a stale version fails naming the key", func(t *testing.T) {
		r := ctl(t, ep, `{"v":2}`, "put", "/k", "--if-version", "7")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "update /k: version 7, stored 1: value version mismatch")
		require.Equal(t, `{"v":1}`, string(rawValue(t, client, "/k")))
	})

	t.Run("put --create on an existing key fails", func(t *testing.T) {
		r := ctl(t, ep, `{"v":2}`, "put", "/k", "--create")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "create /k: key already exists")
	})

	t.Run("put --if-version with the current version succeeds", func(t *testing.T) {
		r := ctl(t, ep, `{"v":2}`, "put", "/k", "--if-version", "1")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "/k: version 2")
		require.Equal(t, `{"v":2}`, string(rawValue(t, client, "/k")))
	})

	t.Run("del --if-version with a stale version fails and keeps the key", func(t *testing.T) {
		r := ctl(t, ep, "", "del", "/k", "--if-version", "1")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "delete /k: version 1, stored 2: value version mismatch")
		rawValue(t, client, "/k")
	})

	t.Run("del --if-version with the current version deletes", func(t *testing.T) {
		r := ctl(t, ep, "", "del", "/k", "--if-version", "2")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "deleted /k (version 2)")
		resp, err := client.Get(t.Context(), "/k")
		require.NoError(t, err)
		require.Empty(t, resp.Kvs)
	})

	t.Run("del of a missing key deletes nothing and succeeds", func(t *testing.T) {
		r := ctl(t, ep, "", "del", "/k")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "deleted 0 keys /k")
	})
}

func TestDeletePrefix(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)
	for _, key := range []string{"/tmp/a", "/tmp/b", "/tmpfile"} {
		require.Equal(t, 0, ctl(t, ep, `{}`, "put", key).code)
	}

	t.Run("without --yes it refuses and says how many keys", func(t *testing.T) {
		r := ctl(t, ep, "", "del", "--prefix", "/tmp")
		require.Equal(t, 2, r.code)
		require.Contains(t, r.stderr, "refusing to delete 2 keys under /tmp/ without --yes")
		resp, err := client.Get(t.Context(), "/tmp", clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
		require.EqualValues(t, 3, resp.Count)
	})

	t.Run("the whole keyspace is refused even with --yes", func(t *testing.T) {
		for _, prefix := range []string{"", "/"} {
			r := ctl(t, ep, "", "del", "--prefix", prefix, "--yes")
			require.Equal(t, 2, r.code)
			require.Contains(t, r.stderr, "refusing to delete the whole keyspace")
		}
	})

	t.Run("with --yes it deletes the keys under the prefix only", func(t *testing.T) {
		r := ctl(t, ep, "", "del", "--prefix", "/tmp", "--yes")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, "deleted 2 keys under /tmp/")
		rawValue(t, client, "/tmpfile")
	})
}

func TestUndecodableValues(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)
	require.Equal(t, 0, ctl(t, ep, `{"n":1}`, "put", "/u/a").code)
	_, err := client.Put(t.Context(), "/u/b", "not json")
	require.NoError(t, err)
	_, err = client.Put(t.Context(), "/u/c", "\x1f\x8bbroken gzip")
	require.NoError(t, err)
	require.Equal(t, 0, ctl(t, ep, `{"n":4}`, "put", "/u/d").code)

	t.Run("get --prefix shows the error for that key and every other key", func(t *testing.T) {
		r := ctl(t, ep, "", "get", "--prefix", "/u")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stdout, "/u/a (version 1")
		require.Contains(t, r.stdout, `{"n":1}`)
		require.Contains(t, r.stdout, "/u/b (version 1")
		require.Contains(t, r.stdout, `error: failed to decode "/u/b"`)
		require.Contains(t, r.stdout, `error: failed to decode "/u/c"`)
		require.Contains(t, r.stdout, `{"n":4}`)
		require.Contains(t, r.stderr, "2 of 4 values could not be decoded")
	})

	t.Run("get --prefix --json gives one parsable line per key", func(t *testing.T) {
		r := ctl(t, ep, "", "get", "--prefix", "/u", "--json")
		require.Equal(t, 1, r.code)
		lines := jsonLines(t, r.stdout)
		require.Len(t, lines, 4)
		var keys []string
		for _, l := range lines {
			keys = append(keys, l["key"].(string))
		}
		require.Equal(t, []string{"/u/a", "/u/b", "/u/c", "/u/d"}, keys)
		require.Contains(t, lines[1]["error"], `failed to decode "/u/b"`)
		require.NotContains(t, lines[1], "value")
		require.Equal(t, map[string]any{"n": float64(4)}, lines[3]["value"])
	})

	t.Run("get of the key alone shows the error", func(t *testing.T) {
		r := ctl(t, ep, "", "get", "/u/b")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stdout, `error: failed to decode "/u/b"`)
	})
}

func TestGetPagesLargePrefixes(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)
	const n = 2*pageSize + 5
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/many/%05d", j), fmt.Sprintf(`{"i":%d}`, j)))
		}
		_, err := client.Txn(t.Context()).Then(ops...).Commit()
		require.NoError(t, err)
	}
	_, err := client.Put(t.Context(), "/many0", `{}`) // outside the prefix
	require.NoError(t, err)

	r := ctl(t, ep, "", "get", "--prefix", "/many", "--json")
	require.Equal(t, 0, r.code)
	lines := jsonLines(t, r.stdout)
	require.Len(t, lines, n)
	for i, l := range lines {
		require.Equal(t, fmt.Sprintf("/many/%05d", i), l["key"])
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)
	big := bigJSON(10_000)
	require.Equal(t, 0, ctl(t, ep, `{"small":true}`, "put", "/s/small").code)
	require.Equal(t, 0, ctl(t, ep, big, "put", "/s/big").code)
	_, err := client.Put(t.Context(), "/s/bad", "not json")
	require.NoError(t, err)
	bigStored := len(rawValue(t, client, "/s/big"))

	r := ctl(t, ep, "", "stats", "--prefix", "/s", "--json")
	require.Equal(t, 0, r.code)
	lines := jsonLines(t, r.stdout)
	require.Len(t, lines, 1)
	s := lines[0]
	require.Equal(t, "/s/", s["prefix"])
	require.EqualValues(t, 3, s["keys"])
	require.EqualValues(t, len(`{"small":true}`)+bigStored+len("not json"), s["stored_bytes"])
	require.Equal(t, "/s/big", s["largest_key"])
	require.EqualValues(t, bigStored, s["largest_stored_bytes"])
	require.EqualValues(t, 1, s["compressed"])
	require.EqualValues(t, len(big), s["compressed_json_bytes"])
	require.InDelta(t, float64(len(big))/float64(bigStored), s["compression_ratio"], 1e-9)
	require.EqualValues(t, 1, s["undecodable"])

	r = ctl(t, ep, "", "stats", "--prefix", "/s")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "keys:               3\n")
	require.Contains(t, r.stdout, "undecodable:        1\n")

	r = ctl(t, ep, "", "stats", "--prefix", "/empty")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "keys:               0\n")
}

// syncBuffer is a bytes.Buffer that a watch writes to while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startWatch runs storagectl watch against ep in a goroutine until the
// returned stop is called; stop returns the exit code.
func startWatch(t *testing.T, ep string, args ...string) (out *syncBuffer, stop func() int) {
	t.Helper()
	args = append([]string{"--endpoints", ep, "--dial-timeout", "30s", "watch"}, args...)
	ctx, cancel := context.WithCancel(t.Context())
	out = &syncBuffer{}
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, strings.NewReader(""), out, &stderr) }()
	return out, func() int {
		cancel()
		select {
		case code := <-done:
			t.Logf("watch exited %d\nstdout:\n%sstderr:\n%s", code, out.String(), stderr.String())
			return code
		case <-time.After(10 * time.Second):
			t.Fatal("watch did not stop after its context ended")
			return -1
		}
	}
}

// waitFor waits until out contains want.
func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), want) },
		30*time.Second, 10*time.Millisecond, "waiting for %q in:\n%s", want, out)
}

func TestWatch(t *testing.T) {
	t.Parallel()
	ep, client := startEtcd(t)

	t.Run("prints the current value, then puts and deletes, until its context ends", func(t *testing.T) {
		require.Equal(t, 0, ctl(t, ep, `{"n":0}`, "put", "/w/a").code)
		out, stop := startWatch(t, ep, "--prefix", "/w")
		waitFor(t, out, `{"n":0}`)

		t.Log("a put by storagectl, a compressed put, a delete")
		require.Equal(t, 0, ctl(t, ep, `{"n":1}`, "put", "/w/a").code)
		big := bigJSON(5000)
		require.Equal(t, 0, ctl(t, ep, big, "put", "/w/big").code)
		_, err := client.Delete(t.Context(), "/w/a")
		require.NoError(t, err)
		waitFor(t, out, "DELETE /w/a")

		require.Equal(t, 0, stop())
		text := out.String()
		require.Contains(t, text, "PUT /w/a (revision ")
		require.Contains(t, text, ", version 2)\n"+`{"n":1}`+"\n")
		require.Contains(t, text, "PUT /w/big (revision ")
		require.Contains(t, text, "\n"+big+"\n")
	})

	t.Run("a single key with --json", func(t *testing.T) {
		// The key exists before the watch starts, so the watch's initial read
		// delivers it however late the watch's goroutine runs; the changes
		// follow only once that read is printed.
		require.Equal(t, 0, ctl(t, ep, `{"one":1}`, "put", "/w/one").code)
		out, stop := startWatch(t, ep, "/w/one", "--json")
		waitFor(t, out, `"type":"put"`)
		require.Equal(t, 0, ctl(t, ep, `{"other":1}`, "put", "/w/other").code)
		_, err := client.Delete(t.Context(), "/w/one")
		require.NoError(t, err)
		waitFor(t, out, `"type":"delete"`)

		require.Equal(t, 0, stop())
		lines := jsonLines(t, out.String())
		require.Len(t, lines, 2)
		require.Equal(t, "put", lines[0]["type"])
		require.Equal(t, "/w/one", lines[0]["key"])
		require.EqualValues(t, 1, lines[0]["version"])
		require.Equal(t, map[string]any{"one": float64(1)}, lines[0]["value"])
		require.Equal(t, "delete", lines[1]["type"])
		require.Greater(t, lines[1]["revision"], lines[0]["revision"])
	})

	t.Run("an undecodable value is an error event, the watch goes on, exit 1", func(t *testing.T) {
		out, stop := startWatch(t, ep, "--prefix", "/wu")
		_, err := client.Put(t.Context(), "/wu/bad", "not json")
		require.NoError(t, err)
		require.Equal(t, 0, ctl(t, ep, `{"after":true}`, "put", "/wu/good").code)
		waitFor(t, out, `{"after":true}`)

		require.Equal(t, 1, stop())
		require.Contains(t, out.String(), `ERROR /wu/bad (revision `)
		require.Contains(t, out.String(), `failed to decode "/wu/bad"`)
	})
}

func TestUnreachableEndpoint(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"get", "/x"},
		{"put", "/x", "{}"},
		{"watch", "--prefix", "/x"},
	} {
		t.Run(args[0]+" fails within the dial timeout", func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			r := storagectl(t, "", append([]string{"--endpoints", "127.0.0.1:1", "--dial-timeout", "500ms", "--command-timeout", "1s"}, args...)...)
			require.Equal(t, 1, r.code)
			require.Contains(t, r.stderr, "cannot reach etcd at 127.0.0.1:1 within --dial-timeout 500ms: context deadline exceeded")
			require.Less(t, time.Since(start), 5*time.Second)
		})
	}

	t.Run("the error shows the last connection error", func(t *testing.T) {
		t.Parallel()
		// Long enough for a first attempt to fail on a loaded machine.
		r := storagectl(t, "", "--endpoints", "127.0.0.1:1", "--dial-timeout", "3s", "get", "/x")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "(last error: ")
		require.Contains(t, r.stderr, "connection refused")
	})
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	// Nothing listens here: every case must fail before connecting.
	ep := "127.0.0.1:1"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "missing command"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"get", "/a", "--frob"}, "unknown flag: --frob"},
		{"get without key or prefix", []string{"get"}, "missing KEY or --prefix"},
		{"get with key and prefix", []string{"get", "/a", "--prefix", "/b"}, "not both"},
		{"get with two keys", []string{"get", "/a", "/b"}, "accepts at most 1 arg"},
		{"get --json --pretty", []string{"get", "/a", "--json", "--pretty"}, "exclude each other"},
		{"put without key", []string{"put"}, "accepts between 1 and 2 arg"},
		{"put --create --if-version", []string{"put", "/a", "{}", "--create", "--if-version", "1"}, "not both"},
		{"put --if-version not a number", []string{"put", "/a", "{}", "--if-version", "x"}, "invalid argument"},
		{"put JSON twice", []string{"put", "/a", "{}", "--from-file", "f"}, "not both"},
		{"del --prefix --if-version", []string{"del", "--prefix", "/a", "--if-version", "1", "--yes"}, "not to --prefix"},
		{"del --if-version 0", []string{"del", "/a", "--if-version", "0"}, "at least 1"},
		{"stats without prefix", []string{"stats"}, "missing --prefix"},
		{"cert without key", []string{"get", "/a", "--cert", "c.pem"}, "--cert and --key must be given together"},
		{"TLS to an http endpoint", []string{"get", "/a", "--cacert", "ca.pem", "--endpoints", "http://127.0.0.1:1"}, "is http"},
		{"bad dial timeout", []string{"get", "/a", "--dial-timeout", "0s"}, "must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := storagectl(t, "", append([]string{"--endpoints", ep}, tc.args...)...)
			require.Equal(t, 2, r.code)
			require.Contains(t, r.stderr, tc.want)
			require.Contains(t, r.stderr, "--help' for usage")
		})
	}

	t.Run("--help of every command exits 0", func(t *testing.T) {
		t.Parallel()
		for _, cmd := range []string{"get", "put", "del", "watch", "stats"} {
			r := storagectl(t, "", cmd, "--help")
			require.Equal(t, 0, r.code)
			require.Contains(t, r.stdout, "Usage:\n  storagectl "+cmd)
			require.Contains(t, r.stdout, "--endpoints")
		}
	})
}

func TestEndpointsFromEnvironment(t *testing.T) {
	ep, _ := startEtcd(t)
	t.Setenv("ETCDCTL_ENDPOINTS", ep)
	require.Equal(t, 0, storagectl(t, `{}`, "put", "/env").code)
	require.Equal(t, 0, storagectl(t, "", "get", "/env").code)
}

func TestAuthentication(t *testing.T) {
	ep, client := startEtcd(t, storagetest.WithServerConfig(func(cfg *embed.Config) {
		// etcd checks passwords with bcrypt at cost 10 by default: seconds
		// per request under -race on a loaded machine.
		cfg.BcryptCost = uint(bcrypt.MinCost)
	}))
	ctx := t.Context()
	_, err := client.RoleAdd(ctx, "root")
	require.NoError(t, err)
	_, err = client.UserAdd(ctx, "root", "s3cret")
	require.NoError(t, err)
	_, err = client.UserGrantRole(ctx, "root", "root")
	require.NoError(t, err)
	_, err = client.AuthEnable(ctx)
	require.NoError(t, err)

	t.Run("user:password from the flag", func(t *testing.T) {
		require.Equal(t, 0, ctl(t, ep, `{"auth":1}`, "--user", "root:s3cret", "put", "/auth").code)
	})

	t.Run("password from ETCDCTL_PASSWORD", func(t *testing.T) {
		t.Setenv("ETCDCTL_PASSWORD", "s3cret")
		r := ctl(t, ep, "", "--user", "root", "get", "/auth")
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, `{"auth":1}`)
	})

	t.Run("a wrong password fails clearly", func(t *testing.T) {
		r := ctl(t, ep, "", "--user", "root:wrong", "get", "/auth")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "connect to etcd at "+ep)
		require.Contains(t, r.stderr, "authentication failed")
	})

	t.Run("no password and no terminal is a usage error", func(t *testing.T) {
		r := ctl(t, ep, "", "--user", "root", "get", "/auth")
		require.Equal(t, 2, r.code)
		require.Contains(t, r.stderr, "set ETCDCTL_PASSWORD")
	})

	t.Run("without a user the request is refused", func(t *testing.T) {
		r := ctl(t, ep, "", "get", "/auth")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "user name is empty")
	})
}
