package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/storage"
)

// The declarations below fail to compile when an exported name of the API
// page is missing or its signature differs. Interfaces are checked both ways
// (each assignable to a literal with the page's methods, and back), so a
// method added or removed breaks the build too.

// Functions and constructors.
var (
	_ func(*clientv3.GetResponse) ([]*host, error) = storage.DecodeGetResponse[*host]
	_ func(...string) string                       = storage.Key
	_ func(...string) string                       = storage.Prefix

	_ func(*clientv3.Client, string, ...clientv3.OpOption) storage.GetOp[*host]                 = storage.NewGetOp[*host]
	_ func(*clientv3.Client, []string, ...clientv3.OpOption) storage.GetMultipleOp[*host]       = storage.NewGetMultipleOp[*host]
	_ func(*clientv3.Client, string, ...clientv3.OpOption) storage.GetMultipleOp[*host]         = storage.NewGetPrefixOp[*host]
	_ func(*clientv3.Client, string, string, ...clientv3.OpOption) storage.GetMultipleOp[*host] = storage.NewGetRangeOp[*host]
	_ func(*clientv3.Client, string) storage.ExistsOp                                           = storage.NewExistsOp
	_ func(*clientv3.Client, string, *host, ...clientv3.OpOption) storage.PutOp[*host]          = storage.NewPutOp[*host]
	_ func(*clientv3.Client, string, *host, ...clientv3.OpOption) storage.PutOp[*host]          = storage.NewCreateOp[*host]
	_ func(*clientv3.Client, string, *host, ...clientv3.OpOption) storage.PutOp[*host]          = storage.NewUpdateOp[*host]
	_ func(*clientv3.Client, string, ...clientv3.OpOption) storage.DeleteOp                     = storage.NewDeleteKeyOp
	_ func(*clientv3.Client, string, ...clientv3.OpOption) storage.DeleteOp                     = storage.NewDeletePrefixOp
	_ func(*clientv3.Client, string, *host, ...clientv3.OpOption) storage.DeleteValueOp[*host]  = storage.NewDeleteValueOp[*host]
	_ func(*clientv3.Client, ...storage.TxnOperation) storage.Txn                               = storage.NewTxn
)

// Sentinel errors.
var (
	_ error = storage.ErrAlreadyExists
	_ error = storage.ErrDuplicateKeysInTransaction
	_ error = storage.ErrNotFound
	_ error = storage.ErrOperationConstraintViolated
	_ error = storage.ErrValueVersionMismatch
	_ error = storage.ErrWatchAlreadyInProgress
)

// Value types: StoredValue and RevisionedValue implement Value with exactly
// the page's methods.
var (
	_ storage.Value = (*storage.StoredValue)(nil)
	_ storage.Value = (*storage.RevisionedValue)(nil)

	_ func(*storage.StoredValue) int64           = (*storage.StoredValue).Version
	_ func(*storage.StoredValue, int64)          = (*storage.StoredValue).SetVersion
	_ func(*storage.RevisionedValue) int64       = (*storage.RevisionedValue).Version
	_ func(*storage.RevisionedValue, int64)      = (*storage.RevisionedValue).SetVersion
	_ func(*storage.RevisionedValue) int64       = (*storage.RevisionedValue).ModRevision
	_ interface{ ModRevision() int64 }           = (*storage.RevisionedValue)(nil)
	_ interface{ Version() int64 }               = (*storage.StoredValue)(nil)
	_ interface{ SetVersion(version int64) }     = (*storage.StoredValue)(nil)
	_ func(storage.Value) int64                  = storage.Value.Version
	_ func(storage.Value, int64)                 = storage.Value.SetVersion
	_ func(storage.VersionUpdater) bool          = storage.VersionUpdater.UpdateVersionEnabled
	_ func(storage.CachedTxnOp)                  = storage.CachedTxnOp.UpdateCache
	_ func(storage.Txn, ...storage.TxnOperation) = storage.Txn.AddOps
)

// The page's interfaces, spelled out. Each storage interface is assigned to
// its literal and back, which compiles only when the method sets are equal.
type (
	apiValue interface {
		Version() int64
		SetVersion(version int64)
	}
	apiTxnOperation interface {
		ClientOp(ctx context.Context) (clientv3.Op, error)
		Cmps() []clientv3.Cmp
		UpdateRevision(revision int64)
		Revision() int64
	}
	apiVersionUpdater interface {
		UpdateVersionEnabled() bool
		UpdateVersion(prevKVs map[string]*mvccpb.KeyValue)
	}
	apiCachedTxnOp interface {
		UpdateCache()
	}
	apiTxn interface {
		AddOps(ops ...storage.TxnOperation)
		Commit(ctx context.Context) error
	}
	apiGetOp interface {
		Exec(ctx context.Context) (*host, error)
	}
	apiGetMultipleOp interface {
		Exec(ctx context.Context) ([]*host, error)
	}
	apiExistsOp interface {
		Exec(ctx context.Context) (bool, error)
	}
	apiPutOp interface {
		apiTxnOperation
		WithTTL(ttl time.Duration) storage.PutOp[*host]
		WithUpdatedVersion() storage.PutOp[*host]
		Exec(ctx context.Context) error
		Revision() int64
		apiVersionUpdater
	}
	apiDeleteOp interface {
		apiTxnOperation
		Exec(ctx context.Context) (int64, error)
		Revision() int64
	}
	apiDeleteValueOp interface {
		apiTxnOperation
		Exec(ctx context.Context) error
		Revision() int64
	}
)

var (
	_ storage.Value                = apiValue(nil)
	_ apiValue                     = storage.Value(nil)
	_ storage.TxnOperation         = apiTxnOperation(nil)
	_ apiTxnOperation              = storage.TxnOperation(nil)
	_ storage.VersionUpdater       = apiVersionUpdater(nil)
	_ apiVersionUpdater            = storage.VersionUpdater(nil)
	_ storage.CachedTxnOp          = apiCachedTxnOp(nil)
	_ apiCachedTxnOp               = storage.CachedTxnOp(nil)
	_ storage.Txn                  = apiTxn(nil)
	_ apiTxn                       = storage.Txn(nil)
	_ storage.GetOp[*host]         = apiGetOp(nil)
	_ apiGetOp                     = storage.GetOp[*host](nil)
	_ storage.GetMultipleOp[*host] = apiGetMultipleOp(nil)
	_ apiGetMultipleOp             = storage.GetMultipleOp[*host](nil)
	_ storage.ExistsOp             = apiExistsOp(nil)
	_ apiExistsOp                  = storage.ExistsOp(nil)
	_ storage.PutOp[*host]         = apiPutOp(nil)
	_ apiPutOp                     = storage.PutOp[*host](nil)
	_ storage.DeleteOp             = apiDeleteOp(nil)
	_ apiDeleteOp                  = storage.DeleteOp(nil)
	_ storage.DeleteValueOp[*host] = apiDeleteValueOp(nil)
	_ apiDeleteValueOp             = storage.DeleteValueOp[*host](nil)
)

// The watch and cache half of the page.
var (
	_ func(*clientv3.Client, string, ...clientv3.OpOption) storage.WatchOp[*host] = storage.NewWatchOp[*host]
	_ func(*clientv3.Client, string, ...clientv3.OpOption) storage.WatchOp[*host] = storage.NewWatchPrefixOp[*host]
	_ func(*clientv3.Client, string, func(v *host) string) storage.Cache[*host]   = storage.NewCache[*host]
	_ storage.EventType                                                           = storage.EventTypePut
	_ storage.EventType                                                           = storage.EventTypeDelete
	_ storage.EventType                                                           = storage.EventTypeError
	_ storage.EventType                                                           = storage.EventTypeUnknown
	_                                                                             = storage.Event[*host]{
		Err: nil, Type: storage.EventTypePut, Key: "", Value: (*host)(nil),
		IsCreate: false, IsModify: false, Revision: 0,
	}
	_ storage.WatchOp[*host] = apiWatchOp(nil)
	_ apiWatchOp             = storage.WatchOp[*host](nil)
	_ storage.Cache[*host]   = apiCache(nil)
	_ apiCache               = storage.Cache[*host](nil)
)

type (
	apiWatchOp interface {
		Watch(ctx context.Context, handle func(e *storage.Event[*host]) error) error
		Close()
		Error() <-chan error
		PropagateErrors(ctx context.Context, ch chan error)
	}
	apiCache interface {
		Start(ctx context.Context) error
		Put(item *host, options ...clientv3.OpOption) storage.PutOp[*host]
		Create(item *host, options ...clientv3.OpOption) storage.PutOp[*host]
		Update(item *host, options ...clientv3.OpOption) storage.PutOp[*host]
		DeleteByKey(key string, options ...clientv3.OpOption) storage.DeleteOp
		DeleteValue(item *host, options ...clientv3.OpOption) storage.DeleteValueOp[*host]
		DeletePrefix(prefix string, options ...clientv3.OpOption) storage.DeleteOp
		Get(key string) storage.GetOp[*host]
		GetPrefix(prefix string) storage.GetMultipleOp[*host]
		Stop()
		Error() <-chan error
		PropagateErrors(ctx context.Context, ch chan error)
		// Issue 20: consistent reads and a self-check.
		Revision() int64
		WaitForRevision(ctx context.Context, rev int64) error
		Sync(ctx context.Context) error
		Verify(ctx context.Context) error
		// Issue 21: subscriptions fed by the cache's watch.
		Watch(prefix string) storage.WatchOp[*host]
	}
)

func TestAPISentinelErrorsKeepThePageTexts(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{storage.ErrAlreadyExists, "key already exists"},
		{storage.ErrDuplicateKeysInTransaction, "duplicate keys in transaction"},
		{storage.ErrNotFound, "key not found"},
		{storage.ErrOperationConstraintViolated, "operation constraint violated"},
		{storage.ErrValueVersionMismatch, "value version mismatch"},
		{storage.ErrWatchAlreadyInProgress, "watch already in progress"},
	} {
		assert.EqualError(t, tc.err, tc.want)
	}
}

func TestAPIValueTypesKeepTheirVersion(t *testing.T) {
	// Both embeddable types round-trip the version through the Value
	// interface, and RevisionedValue starts (and after SetVersion stays)
	// without a mod revision: only reads and writes set it.
	for name, v := range map[string]storage.Value{
		"StoredValue":     &storage.StoredValue{},
		"RevisionedValue": &storage.RevisionedValue{},
	} {
		assert.Zero(t, v.Version(), name)
		v.SetVersion(42)
		assert.EqualValues(t, 42, v.Version(), name)
	}
	var r storage.RevisionedValue
	r.SetVersion(3)
	assert.Zero(t, r.ModRevision())
}
