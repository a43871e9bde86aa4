package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/storage"
)

const (
	// hostTTL is how long a host's key outlives its last heartbeat: at least
	// hostTTL, and on a healthy cluster at most ceil(hostTTL+0.5s) seconds
	// plus etcd's expiry check (up to 0.5 s).
	hostTTL = 2 * time.Second
	// heartbeatEvery leaves a live host's key a second of slack.
	heartbeatEvery = time.Second
	// waitLimit bounds each wait of the story for the watch or the cache.
	waitLimit = 10 * time.Second
)

// demo holds what the steps of the story share.
type demo struct {
	client *clientv3.Client
	out    *syncWriter
	seen   *watchLog            // what the watch of step 1 delivered
	hosts  storage.Cache[*Host] // the cache of step 1

	registered time.Time // when host-3 registered (step 2)
	db         *Database // the current copy of the database record (steps 3 to 6)
}

// story tells the demo's control-plane story against client, writing one
// short line per step (and indented detail lines) to out. It first removes
// what an earlier run left under /demo/, and leaves the keys it writes there
// (host keys expire once their heartbeats stop). Every goroutine it starts
// has stopped when it returns.
func story(ctx context.Context, client *clientv3.Client, out io.Writer) error {
	d := &demo{client: client, out: &syncWriter{w: out}, seen: newWatchLog()}

	n, err := storage.NewDeletePrefixOp(client, demoPrefix).Exec(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		d.printf("removed %d %s left under %s by an earlier run\n", n, plural(n, "key"), demoPrefix)
	}

	d.step(1, "cache %s in memory and watch it through the cache (printing every event)", hostPrefix)
	d.hosts = storage.NewCache(client, hostPrefix, func(h *Host) string { return hostKey(h.Name) })
	if err := d.hosts.Start(ctx); err != nil {
		return fmt.Errorf("step 1: %w", err)
	}
	defer d.hosts.Stop()
	// A subscription of the cache shares its etcd watch, and each event
	// reaches printEvent once the cache holds it.
	watch := d.hosts.Watch("")
	if err := watch.Watch(ctx, d.printEvent); err != nil {
		return fmt.Errorf("step 1: %w", err)
	}
	defer watch.Close() // before the cache's Stop, which would end it with an error

	stopHeartbeats, err := d.registerHosts(ctx)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	defer stopHeartbeats()

	steps := []func(context.Context) error{
		d.createDatabase, d.staleUpdate, d.abaSafety, d.assign,
		d.largeValue, d.cacheFollows, d.expire, d.syncAndVerify,
	}
	for i, s := range steps {
		if err := s(ctx); err != nil {
			return fmt.Errorf("step %d: %w", i+3, err)
		}
	}

	stopHeartbeats()
	// Close drops an error its watch sent and nobody read: look before it.
	for name, errc := range map[string]<-chan error{"watch": watch.Error(), "cache": d.hosts.Error()} {
		select {
		case err := <-errc:
			return fmt.Errorf("%s stopped: %w", name, err)
		default:
		}
	}
	watch.Close()
	d.hosts.Stop()
	d.printf("done: watch closed and cache stopped, neither reported an error\n")
	return nil
}

// registerHosts is step 2: three hosts register with a TTL; heartbeats keep
// host-1 and host-2 alive, while host-3's agent stops after registering. It
// returns, with the function that stops the heartbeats (idempotent), once
// the watch has shown all three.
func (d *demo) registerHosts(ctx context.Context) (stop func(), err error) {
	hosts := []*Host{
		{Name: "host-1", Addr: "10.0.1.11:7000", Zone: "eu-west-1a"},
		{Name: "host-2", Addr: "10.0.2.12:7000", Zone: "eu-west-1b"},
		{Name: "host-3", Addr: "10.0.3.13:7000", Zone: "eu-west-1c"},
	}
	d.step(2, "register host-1, host-2, host-3 with a %v TTL; heartbeats refresh host-1 and host-2 every %v, host-3's agent stops after registering", hostTTL, heartbeatEvery)
	for _, h := range hosts {
		d.registered = time.Now()
		if err := heartbeat(ctx, d.client, h); err != nil {
			return nil, err
		}
	}
	stop = d.startHeartbeats(ctx, hosts[:2])
	err = d.seen.waitFor(ctx, func(last map[string]storage.EventType) bool {
		return len(last) == len(hosts)
	})
	if err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// heartbeat puts h with the host TTL: each put attaches the key to a lease
// that has at least hostTTL left.
func heartbeat(ctx context.Context, client *clientv3.Client, h *Host) error {
	return storage.NewPutOp(client, hostKey(h.Name), h).WithTTL(hostTTL).Exec(ctx)
}

// startHeartbeats refreshes hosts every heartbeatEvery in a goroutine, until
// the returned stop is called (or ctx ends); stop waits for the goroutine and
// is idempotent. The goroutine only reads the hosts.
func (d *demo) startHeartbeats(ctx context.Context, hosts []*Host) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	donec := make(chan struct{})
	go func() {
		defer close(donec)
		tick := time.NewTicker(heartbeatEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for _, h := range hosts {
				if err := heartbeat(ctx, d.client, h); err != nil && ctx.Err() == nil {
					d.detail("heartbeat of %s failed: %v", h.Name, err)
				}
			}
		}
	}()
	return func() { cancel(); <-donec }
}

// createDatabase is step 3: create a record, and fail to create it twice.
func (d *demo) createDatabase(ctx context.Context) error {
	key := databaseKey("orders")
	d.db = &Database{Name: "orders", Engine: "postgres-17", SizeGB: 10}
	d.step(3, "create %s", key)
	if err := storage.NewCreateOp(d.client, key, d.db).WithUpdatedVersion().Exec(ctx); err != nil {
		return err
	}
	resp, err := d.client.Get(ctx, key)
	if err != nil {
		return err
	}
	d.detail("created: version %d, stored as plain JSON without the version: %s", d.db.Version(), resp.Kvs[0].Value)
	err = storage.NewCreateOp(d.client, key, &Database{Name: "orders", Engine: "mysql-8"}).Exec(ctx)
	if !errors.Is(err, storage.ErrAlreadyExists) {
		return fmt.Errorf("a second create returned %v, want ErrAlreadyExists", err)
	}
	d.detail("a second create fails: %v", err)
	return nil
}

// staleUpdate is step 4: of two copies read at one version, the second to
// update is refused. The copy that won, with its new version, becomes d.db.
func (d *demo) staleUpdate(ctx context.Context) error {
	key := databaseKey(d.db.Name)
	d.step(4, "two operators read %s; both resize it", key)
	first, err := storage.NewGetOp[*Database](d.client, key).Exec(ctx)
	if err != nil {
		return err
	}
	second, err := storage.NewGetOp[*Database](d.client, key).Exec(ctx)
	if err != nil {
		return err
	}
	read := first.Version()
	first.SizeGB = 20
	if err := storage.NewUpdateOp(d.client, key, first).WithUpdatedVersion().Exec(ctx); err != nil {
		return err
	}
	d.detail("both copies have version %d; the first updates the size to %d GB: version %d", read, first.SizeGB, first.Version())
	second.SizeGB = 50
	err = storage.NewUpdateOp(d.client, key, second).Exec(ctx)
	if !errors.Is(err, storage.ErrValueVersionMismatch) {
		return fmt.Errorf("a stale update returned %v, want ErrValueVersionMismatch", err)
	}
	d.detail("the stale copy is refused: %v", err)
	d.db = first
	return nil
}

// abaSafety is step 5: a RevisionedValue read before its key was deleted
// and re-created cannot overwrite the new key, although the versions match.
func (d *demo) abaSafety(ctx context.Context) error {
	key := maintenanceKey("host-2")
	d.step(5, "ABA: %s is deleted and re-created while an operator holds a copy", key)
	window := &Maintenance{Host: "host-2", Reason: "kernel upgrade"}
	if err := storage.NewCreateOp(d.client, key, window).WithUpdatedVersion().Exec(ctx); err != nil {
		return err
	}
	stale, err := storage.NewGetOp[*Maintenance](d.client, key).Exec(ctx)
	if err != nil {
		return err
	}
	if err := storage.NewDeleteValueOp(d.client, key, window).Exec(ctx); err != nil {
		return err
	}
	next := &Maintenance{Host: "host-2", Reason: "disk replacement"}
	if err := storage.NewCreateOp(d.client, key, next).WithUpdatedVersion().Exec(ctx); err != nil {
		return err
	}
	d.detail("the copy: version %d, mod revision %d; the re-created key: version %d, mod revision %d",
		stale.Version(), stale.ModRevision(), next.Version(), next.ModRevision())
	stale.Reason = "kernel upgrade, extended"
	err = storage.NewUpdateOp(d.client, key, stale).Exec(ctx)
	if !errors.Is(err, storage.ErrValueVersionMismatch) {
		return fmt.Errorf("a stale update returned %v, want ErrValueVersionMismatch", err)
	}
	d.detail("its update is refused (a version compare would have let it through): %v", err)
	return nil
}

// assign is step 6: one transaction places the database on host-1. Its
// first commit fails on a stale inventory; after a refresh the same Txn
// commits.
func (d *demo) assign(ctx context.Context) error {
	db := d.db
	inv := &Inventory{Host: "host-1", Slots: 4}
	if err := storage.NewCreateOp(d.client, inventoryKey("host-1"), inv).WithUpdatedVersion().Exec(ctx); err != nil {
		return err
	}
	d.step(6, "place %s on host-1 in one txn: update the database, create %s, take a slot in %s",
		db.Name, assignmentKey(db.Name), inventoryKey("host-1"))
	other, err := storage.NewGetOp[*Inventory](d.client, inventoryKey("host-1")).Exec(ctx)
	if err != nil {
		return err
	}
	other.Used++
	if err := storage.NewUpdateOp(d.client, inventoryKey("host-1"), other).Exec(ctx); err != nil {
		return err
	}
	d.detail("meanwhile another scheduler took a slot on host-1")

	db.Host = "host-1"
	inv.Used++
	assignment := &Assignment{Database: db.Name, Host: "host-1"}
	ops := []storage.TxnOperation{
		storage.NewUpdateOp(d.client, databaseKey(db.Name), db).WithUpdatedVersion(),
		storage.NewCreateOp(d.client, assignmentKey(db.Name), assignment).WithUpdatedVersion(),
		storage.NewUpdateOp(d.client, inventoryKey("host-1"), inv).WithUpdatedVersion(),
	}
	txn := storage.NewTxn(d.client, ops...)
	commitErr := txn.Commit(ctx)
	if !errors.Is(commitErr, storage.ErrValueVersionMismatch) {
		return fmt.Errorf("the first commit returned %v, want ErrValueVersionMismatch", commitErr)
	}
	d.detail("commit fails: %v", commitErr)
	written, err := storage.NewExistsOp(d.client, assignmentKey(db.Name)).Exec(ctx)
	if err != nil {
		return err
	}
	d.detail("errors.Is finds ErrOperationConstraintViolated: %t, ErrValueVersionMismatch: %t; assignment written: %t",
		errors.Is(commitErr, storage.ErrOperationConstraintViolated), errors.Is(commitErr, storage.ErrValueVersionMismatch), written)

	fresh, err := storage.NewGetOp[*Inventory](d.client, inventoryKey("host-1")).Exec(ctx)
	if err != nil {
		return err
	}
	*inv = *fresh // the op holds inv: refresh it in place, then commit the same Txn
	inv.Used++
	if err := txn.Commit(ctx); err != nil {
		return err
	}
	d.detail("refreshed the inventory and committed the same txn at revision %d: database version %d, assignment version %d, inventory version %d (%d of %d slots used)",
		ops[0].Revision(), db.Version(), assignment.Version(), inv.Version(), inv.Used, inv.Slots)
	return nil
}

// largeValue is step 7: a value of 2048 bytes of JSON or more is stored
// gzip-compressed, and reads back as it was written.
func (d *demo) largeValue(ctx context.Context) error {
	key := accessKey("orders")
	cfg := &AccessConfig{Database: "orders", Rules: accessRules(48)}
	d.step(7, "store the access rules of orders (%d rules) at %s", len(cfg.Rules), key)
	if err := storage.NewPutOp(d.client, key, cfg).Exec(ctx); err != nil {
		return err
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	resp, err := d.client.Get(ctx, key)
	if err != nil {
		return err
	}
	stored := resp.Kvs[0].Value
	d.detail("JSON %d bytes, stored %d bytes gzip-compressed (raw get: starts % x)", len(js), len(stored), stored[:2])
	back, err := storage.NewGetOp[*AccessConfig](d.client, key).Exec(ctx)
	if err != nil {
		return err
	}
	d.detail("read back: version %d, %d rules, equal to what was written: %t",
		back.Version(), len(back.Rules), reflect.DeepEqual(back.Rules, cfg.Rules))
	return nil
}

// cacheFollows is step 8: the cache has followed the registrations, and its
// results are the caller's to change.
func (d *demo) cacheFollows(ctx context.Context) error {
	d.step(8, "read the hosts from the cache")
	names, err := d.cachedHosts(ctx)
	if err != nil {
		return err
	}
	d.detail("cache.GetPrefix(%q): %s (key order, from memory)", hostPrefix, strings.Join(names, ", "))
	h, err := d.hosts.Get(hostKey("host-1")).Exec(ctx)
	if err != nil {
		return err
	}
	h.Zone = "changed-by-caller"
	again, err := d.hosts.Get(hostKey("host-1")).Exec(ctx)
	if err != nil {
		return err
	}
	d.detail("a result is a fresh instance: after changing one, the cache still says zone %s", again.Zone)
	return nil
}

// expire is step 9: host-3 sent no heartbeat since it registered; its key
// expires, the watch sees the delete and the cache drops the host.
func (d *demo) expire(ctx context.Context) error {
	d.step(9, "wait for host-3's key to expire (no heartbeat since it registered)")
	err := d.seen.waitFor(ctx, func(last map[string]storage.EventType) bool {
		return last[hostKey("host-3")] == storage.EventTypeDelete
	})
	if err != nil {
		return err
	}
	bound := math.Ceil((hostTTL + time.Second/2).Seconds())
	d.detail("host-3 expired %.1fs after it registered (TTL %v: at least %v, at most %gs + a 0.5s expiry check)",
		time.Since(d.registered).Seconds(), hostTTL, hostTTL, bound)
	names, err := d.cachedHosts(ctx)
	if err != nil {
		return err
	}
	exists, err := storage.NewExistsOp(d.client, hostKey("host-3")).Exec(ctx)
	if err != nil {
		return err
	}
	d.detail("cache: %s; host-3 exists in etcd: %t", strings.Join(names, ", "), exists)
	return nil
}

// cachedHosts returns the names of the cached hosts after a Sync: the cache
// then holds every write etcd had committed, whoever made it.
func (d *demo) cachedHosts(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	if err := d.hosts.Sync(ctx); err != nil {
		return nil, err
	}
	hosts, err := d.hosts.GetPrefix("").Exec(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	return names, nil
}

// syncAndVerify is step 10: a write through another client reaches the
// cache by the time Sync returns, and Verify finds the cache equal to etcd.
func (d *demo) syncAndVerify(ctx context.Context) error {
	d.step(10, "write through another client, Sync the cache, and verify it against etcd")
	other, err := clientv3.New(clientv3.Config{Endpoints: d.client.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer other.Close()
	put := storage.NewPutOp(other, hostKey("host-4"), &Host{Name: "host-4", Zone: "eu-west-1c"})
	if err := put.Exec(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	if err := d.hosts.Sync(ctx); err != nil {
		return err
	}
	h, err := d.hosts.Get(hostKey("host-4")).Exec(ctx)
	if err != nil {
		return err
	}
	d.detail("after Sync the cache has %s in zone %s (written at revision %d, cache at %d)",
		h.Name, h.Zone, put.Revision(), d.hosts.Revision())
	if err := d.hosts.Verify(ctx); err != nil {
		return err
	}
	d.detail("verify: every key of the cache has etcd's mod revision at revision %d", d.hosts.Revision())
	return nil
}

// printEvent is the handler of the cache's subscription: it prints the
// event, then records it for the story's waits.
func (d *demo) printEvent(e *storage.Event[*Host]) error {
	switch {
	case e.Type == storage.EventTypeError:
		d.detail("watch: error  %s rev %d: %v", e.Key, e.Revision, e.Err)
	case e.IsCreate:
		d.detail("watch: put    %s rev %d (created)", e.Key, e.Revision)
	case e.IsModify:
		d.detail("watch: put    %s rev %d (heartbeat, version %d)", e.Key, e.Revision, e.Value.Version())
	default:
		d.detail("watch: %-6s %s rev %d", e.Type, e.Key, e.Revision)
	}
	d.seen.record(e.Key, e.Type)
	return nil
}

func (d *demo) step(n int, format string, args ...any) {
	d.printf("%d. "+format+"\n", append([]any{n}, args...)...)
}

func (d *demo) detail(format string, args ...any) {
	d.printf("   "+format+"\n", args...)
}

func (d *demo) printf(format string, args ...any) {
	d.out.printf(format, args...)
}
