package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
	"github.com/etcdkit/storage/storagetest"
)

// The examples share one etcd, started lazily by the first of them and
// stopped in TestMain after m.Run. Starting it before m.Run would leave
// goroutines running before the cluster tests, and etcd's integration
// framework then skips them silently (ETCD-FACTS trap 3).
var (
	exampleOnce   sync.Once
	exampleServer *storagetest.Server
	exampleErr    error
)

// exampleClient returns a client of the shared example etcd, with the keys
// of earlier examples removed.
func exampleClient() *clientv3.Client {
	exampleOnce.Do(func() { exampleServer, exampleErr = storagetest.Start() })
	if exampleErr != nil {
		panic(exampleErr)
	}
	client := exampleServer.Client()
	if _, err := client.Delete(context.Background(), "/", clientv3.WithPrefix()); err != nil {
		panic(err)
	}
	return client
}

// Host is a record a control plane keeps in etcd.
type Host struct {
	storage.StoredValue
	Name string `json:"name"`
	Zone string `json:"zone"`
}

func Example() {
	ctx := context.Background()
	client := exampleClient()

	key := storage.Key("hosts", "db-1")
	h := &Host{Name: "db-1", Zone: "eu-west-1a"}
	if err := storage.NewPutOp(client, key, h).Exec(ctx); err != nil {
		fmt.Println(err)
		return
	}
	got, err := storage.NewGetOp[*Host](client, key).Exec(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(got.Name, got.Zone, "version", got.Version())
	// Output: db-1 eu-west-1a version 1
}

func ExampleNewCreateOp() {
	ctx := context.Background()
	client := exampleClient()

	key := storage.Key("hosts", "db-1")
	h := &Host{Name: "db-1"}
	err := storage.NewCreateOp(client, key, h).WithUpdatedVersion().Exec(ctx)
	fmt.Println("created:", err, "version", h.Version())

	err = storage.NewCreateOp(client, key, &Host{Name: "db-1"}).Exec(ctx)
	fmt.Println(err)
	fmt.Println(errors.Is(err, storage.ErrAlreadyExists))
	// Output:
	// created: <nil> version 1
	// create /hosts/db-1: key already exists
	// true
}

func ExampleNewUpdateOp() {
	ctx := context.Background()
	client := exampleClient()

	key := storage.Key("hosts", "db-1")
	if err := storage.NewCreateOp(client, key, &Host{Name: "db-1"}).Exec(ctx); err != nil {
		fmt.Println(err)
		return
	}
	mine, _ := storage.NewGetOp[*Host](client, key).Exec(ctx)
	theirs, _ := storage.NewGetOp[*Host](client, key).Exec(ctx)

	theirs.Zone = "eu-west-1b"
	fmt.Println(storage.NewUpdateOp(client, key, theirs).WithUpdatedVersion().Exec(ctx), theirs.Version())

	mine.Zone = "eu-west-1c" // based on version 1, which is gone
	err := storage.NewUpdateOp(client, key, mine).Exec(ctx)
	fmt.Println(err)
	fmt.Println(errors.Is(err, storage.ErrValueVersionMismatch))
	// Output:
	// <nil> 2
	// update /hosts/db-1: version 1, stored 2: value version mismatch
	// true
}

func ExampleNewTxn() {
	ctx := context.Background()
	client := exampleClient()

	if err := storage.NewCreateOp(client, "/hosts/db-1", &Host{Name: "db-1"}).Exec(ctx); err != nil {
		fmt.Println(err)
		return
	}
	stale := &Host{Name: "db-2"}
	stale.SetVersion(3)
	txn := storage.NewTxn(client,
		storage.NewCreateOp(client, "/hosts/db-1", &Host{Name: "db-1"}),
		storage.NewUpdateOp(client, "/hosts/db-2", stale),
		storage.NewPutOp(client, "/hosts/db-3", &Host{Name: "db-3"}),
	)
	err := txn.Commit(ctx)
	fmt.Println(err)
	fmt.Println(errors.Is(err, storage.ErrOperationConstraintViolated),
		errors.Is(err, storage.ErrAlreadyExists), errors.Is(err, storage.ErrValueVersionMismatch))
	exists, _ := storage.NewExistsOp(client, "/hosts/db-3").Exec(ctx)
	fmt.Println("db-3 written:", exists)
	// Output:
	// txn: operation constraint violated: create /hosts/db-1: key already exists; update /hosts/db-2: version 3, stored 0: value version mismatch
	// true true true
	// db-3 written: false
}

func ExampleNewWatchPrefixOp() {
	ctx := context.Background()
	client := exampleClient()

	if err := storage.NewPutOp(client, "/hosts/db-1", &Host{Name: "db-1"}).Exec(ctx); err != nil {
		fmt.Println(err)
		return
	}
	events := make(chan *storage.Event[*Host], 10)
	watch := storage.NewWatchPrefixOp[*Host](client, "/hosts")
	defer watch.Close()
	// The initial read delivers db-1; then every change arrives once, in order.
	err := watch.Watch(ctx, func(e *storage.Event[*Host]) error {
		events <- e
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = storage.NewPutOp(client, "/hosts/db-2", &Host{Name: "db-2"}).Exec(ctx)
	_, _ = storage.NewDeleteKeyOp(client, "/hosts/db-1").Exec(ctx)
	for range 3 {
		select {
		case e := <-events:
			fmt.Println(e.Type, e.Key, "create:", e.IsCreate)
		case <-time.After(10 * time.Second):
			fmt.Println("timed out")
			return
		}
	}
	// Output:
	// put /hosts/db-1 create: true
	// put /hosts/db-2 create: true
	// delete /hosts/db-1 create: false
}

func ExampleNewCache() {
	ctx := context.Background()
	client := exampleClient()

	cache := storage.NewCache[*Host](client, "/hosts", func(h *Host) string { return storage.Key("hosts", h.Name) })
	if err := cache.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer cache.Stop()

	for _, name := range []string{"db-2", "db-1"} {
		// Cache writes go to etcd, and the cache holds the result at once.
		if err := cache.Create(&Host{Name: name}).Exec(ctx); err != nil {
			fmt.Println(err)
			return
		}
	}
	hosts, err := cache.GetPrefix("").Exec(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, h := range hosts {
		fmt.Println(h.Name, h.Version())
	}
	// Output:
	// db-1 1
	// db-2 1
}
