package storagetest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/storage/storagetest"
)

// TestMain fails the run if any goroutine outlives the tests, examples and
// benchmarks: every server must be gone once its cleanup or Close has run.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNew(t *testing.T) {
	t.Parallel()

	t.Run("returns a client that can put and get", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t)

		_, err := client.Put(t.Context(), "greeting", "hello")
		require.NoError(t, err)
		resp, err := client.Get(t.Context(), "greeting")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		require.Equal(t, "hello", string(resp.Kvs[0].Value))
	})

	t.Run("parallel servers do not share data", func(t *testing.T) {
		t.Parallel()
		a, b := storagetest.New(t), storagetest.New(t)
		require.NotEqual(t, a.Endpoints(), b.Endpoints())

		putResp, err := a.Put(t.Context(), "only-in-a", "1")
		require.NoError(t, err)
		resp, err := b.Get(t.Context(), "only-in-a")
		require.NoError(t, err)
		require.Empty(t, resp.Kvs, "a write to one server is visible in another")
		require.NotEqual(t, putResp.Header.ClusterId, resp.Header.ClusterId, "two servers share a cluster ID")
		require.NotEqual(t, putResp.Header.MemberId, resp.Header.MemberId, "two servers share a member ID")
	})

	for i := range 4 {
		t.Run(fmt.Sprintf("parallel subtest %d has its own server", i), func(t *testing.T) {
			t.Parallel()
			client := storagetest.New(t)
			want := fmt.Sprint(i)

			_, err := client.Put(t.Context(), "k", want)
			require.NoError(t, err)
			resp, err := client.Get(t.Context(), "k")
			require.NoError(t, err)
			require.Len(t, resp.Kvs, 1)
			require.Equal(t, want, string(resp.Kvs[0].Value))
			require.EqualValues(t, 2, resp.Header.Revision, "another test wrote to this server")
		})
	}
}

func TestWithServerConfig(t *testing.T) {
	t.Parallel()

	t.Run("MaxTxnOps limits the ops in a txn", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t, storagetest.WithServerConfig(func(cfg *embed.Config) {
			cfg.MaxTxnOps = 4
		}))

		_, err := client.Txn(t.Context()).Then(puts(4)...).Commit()
		require.NoError(t, err, "a txn of MaxTxnOps ops must pass")
		_, err = client.Txn(t.Context()).Then(puts(5)...).Commit()
		require.ErrorIs(t, err, rpctypes.ErrTooManyOps)
	})

	t.Run("options apply in order", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t,
			storagetest.WithServerConfig(func(cfg *embed.Config) { cfg.MaxTxnOps = 1 }),
			storagetest.WithServerConfig(func(cfg *embed.Config) { cfg.MaxTxnOps = 2 }),
		)

		_, err := client.Txn(t.Context()).Then(puts(2)...).Commit()
		require.NoError(t, err)
		_, err = client.Txn(t.Context()).Then(puts(3)...).Commit()
		require.ErrorIs(t, err, rpctypes.ErrTooManyOps)
	})

	t.Run("WatchProgressNotifyInterval sends progress notifications", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t, storagetest.WithServerConfig(func(cfg *embed.Config) {
			cfg.WatchProgressNotifyInterval = 50 * time.Millisecond
		}))

		// etcd's default interval is ten minutes: a notification within
		// seconds comes from the option.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for resp := range client.Watch(ctx, "quiet", clientv3.WithProgressNotify()) {
			if resp.IsProgressNotify() {
				return
			}
		}
		t.Fatal("no progress notification before the deadline")
	})
}

// puts returns n puts to distinct keys.
func puts(n int) []clientv3.Op {
	ops := make([]clientv3.Op, n)
	for i := range ops {
		ops[i] = clientv3.OpPut(fmt.Sprintf("key-%d", i), "v")
	}
	return ops
}

func TestWithClientConfig(t *testing.T) {
	t.Parallel()

	t.Run("MaxCallRecvMsgSize limits the client from New", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t, storagetest.WithClientConfig(func(cfg *clientv3.Config) {
			cfg.MaxCallRecvMsgSize = 1024
		}))

		_, err := client.Put(t.Context(), "big", string(randomBytes(t, 4096)))
		require.NoError(t, err, "the receive limit must not apply to sends")
		_, err = client.Get(t.Context(), "big")
		require.Error(t, err)
		require.Equal(t, codes.ResourceExhausted, status.Code(err), "error: %v", err)
	})

	t.Run("does not apply to NewClient", func(t *testing.T) {
		t.Parallel()
		s, err := storagetest.Start(storagetest.WithClientConfig(func(cfg *clientv3.Config) {
			cfg.MaxCallRecvMsgSize = 1024
		}))
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })

		value := randomBytes(t, 4096)
		_, err = s.Client().Put(t.Context(), "big", string(value))
		require.NoError(t, err)

		other, err := s.NewClient(clientv3.Config{})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, other.Close()) })
		resp, err := other.Get(t.Context(), "big")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		require.True(t, bytes.Equal(value, resp.Kvs[0].Value))
	})

	t.Run("empty Endpoints are filled in again", func(t *testing.T) {
		t.Parallel()
		client := storagetest.New(t, storagetest.WithClientConfig(func(cfg *clientv3.Config) {
			cfg.Endpoints = nil
		}))

		_, err := client.Put(t.Context(), "k", "v")
		require.NoError(t, err)
	})
}

// randomBytes returns n incompressible bytes, so that no layer can shrink a
// value below the limit under test.
func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func TestStart(t *testing.T) {
	// Serial: it sets TMPDIR and checks goroutines of the whole process.

	t.Run("Close stops the server and removes its data dir", func(t *testing.T) {
		tmp := t.TempDir()
		t.Setenv("TMPDIR", tmp) // os.MkdirTemp("", ...) creates under $TMPDIR
		ignore := goleak.IgnoreCurrent()

		s, err := storagetest.Start()
		require.NoError(t, err)
		entries, err := os.ReadDir(tmp)
		require.NoError(t, err)
		require.Len(t, entries, 1, "Start must create one data dir")
		_, err = s.Client().Put(t.Context(), "k", "v")
		require.NoError(t, err)

		require.NoError(t, s.Close())
		entries, err = os.ReadDir(tmp)
		require.NoError(t, err)
		require.Empty(t, entries, "Close must remove the data dir")
		goleak.VerifyNone(t, ignore)
	})

	t.Run("Close is idempotent and safe to call concurrently", func(t *testing.T) {
		s, err := storagetest.Start()
		require.NoError(t, err)

		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { assert.NoError(t, s.Close()) }) // require must not leave other goroutines
		}
		wg.Wait()
		require.NoError(t, s.Close())
	})

	t.Run("Close succeeds after the caller closed Client", func(t *testing.T) {
		s, err := storagetest.Start()
		require.NoError(t, err)

		require.NoError(t, s.Client().Close())
		require.NoError(t, s.Close())
	})

	t.Run("a failed start leaves no server and no data dir", func(t *testing.T) {
		tmp := t.TempDir()
		t.Setenv("TMPDIR", tmp)
		ignore := goleak.IgnoreCurrent()

		_, err := storagetest.Start(storagetest.WithServerConfig(func(cfg *embed.Config) {
			cfg.ElectionMs = cfg.TickMs // etcd requires ElectionMs >= 5*TickMs
		}))
		require.ErrorContains(t, err, "start etcd")
		t.Logf("Start failed as expected: %v", err)
		entries, err := os.ReadDir(tmp)
		require.NoError(t, err)
		require.Empty(t, entries, "a failed Start must remove the data dir")
		goleak.VerifyNone(t, ignore)
	})

	t.Run("a client that cannot reach the server fails Start within its DialTimeout", func(t *testing.T) {
		tmp := t.TempDir()
		t.Setenv("TMPDIR", tmp)
		ignore := goleak.IgnoreCurrent()

		// clientv3.New succeeds for an endpoint nobody listens on (port 1):
		// only the probe of Start can fail here.
		_, err := storagetest.Start(storagetest.WithClientConfig(func(cfg *clientv3.Config) {
			cfg.Endpoints = []string{"127.0.0.1:1"}
			cfg.DialTimeout = 300 * time.Millisecond
		}))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, "start etcd: client cannot reach it at [127.0.0.1:1] within 300ms")
		entries, err := os.ReadDir(tmp)
		require.NoError(t, err)
		require.Empty(t, entries, "a failed Start must remove the data dir")
		goleak.VerifyNone(t, ignore)
	})

	t.Run("clients from NewClient fail after Close", func(t *testing.T) {
		s, err := storagetest.Start()
		require.NoError(t, err)
		other, err := s.NewClient(clientv3.Config{DialTimeout: time.Second})
		require.NoError(t, err)
		defer other.Close()

		require.NoError(t, s.Close())
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		_, err = other.Get(ctx, "k")
		require.Error(t, err)
	})
}

func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		s, err := storagetest.Start()
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNew shows that New takes a *testing.B: the server lives for the
// whole benchmark and is closed by its cleanup.
func BenchmarkNew(b *testing.B) {
	client := storagetest.New(b)
	for b.Loop() {
		if _, err := client.Put(b.Context(), "k", "v"); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleStart() {
	s, err := storagetest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	ctx := context.Background()
	if _, err := s.Client().Put(ctx, "greeting", "hello"); err != nil {
		fmt.Println(err)
		return
	}
	resp, err := s.Client().Get(ctx, "greeting")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s\n", resp.Kvs[0].Value)
	// Output: hello
}
