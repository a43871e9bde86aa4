package storage

import (
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The sentinel errors below are wrapped by the errors the package returns;
// test for them with errors.Is. Their texts are part of the API.
var (
	// ErrAlreadyExists indicates that a value could not be created because
	// the key already exists.
	ErrAlreadyExists = errors.New("key already exists")

	// ErrDuplicateKeysInTransaction indicates that the transaction contained
	// duplicate keys.
	ErrDuplicateKeysInTransaction = errors.New("duplicate keys in transaction")

	// ErrNotFound indicates that no values were found for the given key.
	ErrNotFound = errors.New("key not found")

	// ErrOperationConstraintViolated indicates that one of the constraints on
	// the operation, such as 'version = 0', was violated.
	ErrOperationConstraintViolated = errors.New("operation constraint violated")

	// ErrValueVersionMismatch indicates that the operation failed because the
	// stored value's version didn't match the given value's version.
	ErrValueVersionMismatch = errors.New("value version mismatch")

	// ErrWatchAlreadyInProgress indicates that the WatchOp has already been
	// started and cannot be started again until it's closed.
	ErrWatchAlreadyInProgress = errors.New("watch already in progress")
)

// txnFailedError is the error of a transaction whose compares did not all
// hold. It wraps ErrOperationConstraintViolated and the error of every failed
// op, so errors.Is finds ErrAlreadyExists or ErrValueVersionMismatch as it
// would for the op run alone.
type txnFailedError struct {
	failed []error // one per failed op, each naming the op and key
	// unexplained is why the failed ops are unknown: the read that was to
	// tell them failed. It names the compared keys and wraps that read's error.
	unexplained error
}

func (e *txnFailedError) Error() string {
	if e.unexplained != nil {
		return fmt.Sprintf("txn: %v: %v", ErrOperationConstraintViolated, e.unexplained)
	}
	msgs := make([]string, len(e.failed))
	for i, err := range e.failed {
		msgs[i] = err.Error()
	}
	return fmt.Sprintf("txn: %v: %s", ErrOperationConstraintViolated, strings.Join(msgs, "; "))
}

func (e *txnFailedError) Unwrap() []error {
	if e.unexplained != nil {
		return []error{ErrOperationConstraintViolated, e.unexplained}
	}
	return append([]error{ErrOperationConstraintViolated}, e.failed...)
}

// wrapRequestErr wraps an error from an etcd request with what was being done
// (e.g. "put /a"), keeping the cause for errors.Is. The three size limits a
// request can hit are told apart, because each is raised in a different
// place: the server's op count (--max-txn-ops), the server's request size
// (--max-request-bytes), and the client's gRPC message size limits.
func wrapRequestErr(what string, err error, nops, ncmps int) error {
	switch {
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("%s: %d ops and %d compares exceed the server's operation limit (--max-txn-ops counts each separately): %w",
			what, nops, ncmps, err)
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("%s: request with %d ops and %d compares exceeds the server's request size limit (--max-request-bytes): %w",
			what, nops, ncmps, err)
	case status.Code(err) == codes.ResourceExhausted:
		return fmt.Errorf("%s: request with %d ops and %d compares exceeds the client's gRPC message size limit (clientv3.Config MaxCallSendMsgSize/MaxCallRecvMsgSize): %w",
			what, nops, ncmps, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
