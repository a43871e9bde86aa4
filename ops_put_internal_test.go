package storage

import (
	"reflect"
	"testing"
)

// A caller allocates a putOp for every put; see putOp for why 128 bytes.
func TestPutOpFitsTheAllocatorsSizeClassOf128Bytes(t *testing.T) {
	if size := reflect.TypeFor[putOp[*StoredValue]]().Size(); size > 128 {
		t.Fatalf("putOp is %d bytes, which puts it in a larger size class than 128", size)
	}
}
