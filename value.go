package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"

	"github.com/klauspost/compress/gzip"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Value is the interface that all stored values must adhere to. Values are
// stored as their encoding/json encoding and carry the key's etcd version,
// which they expose through this interface. The version is never part of the
// JSON: embed [StoredValue] (or [RevisionedValue]), or tag your own field
// `json:"-"`.
//
// The stored bytes are a fixed format, since other services read and write
// the same keys. An encoding of 2048 bytes or more is stored
// gzip-compressed, as RFC 1952 defines. A shorter one is stored as plain
// JSON, which etcdctl shows as text. On read, bytes that start with the gzip
// magic 1f 8b are decompressed and any other bytes are read as plain JSON,
// so values that any writer stored in either form read back. After
// decoding, the version is set from the key's etcd Version, and a
// RevisionedValue's mod revision from the key's ModRevision.
//
// Bytes that cannot be decoded give an error naming the key, never a panic.
// JSON null is such an error: it would leave a nil value. So is a gzip
// value that inflates past 64 MiB, which protects against a decompression
// bomb. A nil value is refused on write with an error, and nothing is
// written.
//
// A value with its own UnmarshalJSON must copy the bytes it keeps, as
// encoding/json requires: decoding hands it a buffer that is reused once it
// returns.
//
// V in the generic ops is normally a pointer to a struct embedding
// StoredValue, e.g. *Host.
type Value interface {
	// Version returns the etcd version of the key the value was read from or
	// written to: 1 after a create, +1 on every put, 0 for a value that has
	// never been stored.
	Version() int64
	// SetVersion sets the version. Ops set it after every read, and after a
	// write when asked to (WithUpdatedVersion).
	SetVersion(version int64)
}

// StoredValue is an embeddable struct that implements [Value]. Its only state
// is the version, so a value read from etcd is reflect.DeepEqual to one built
// by hand with the same fields and version.
//
// A version compare cannot tell a key from one deleted and re-created in the
// meantime (etcd resets a deleted key's version to 0). Records that are
// deleted and re-created should embed [RevisionedValue] instead.
type StoredValue struct {
	version int64
}

// Version returns the etcd version of the value's key.
func (v *StoredValue) Version() int64 { return v.version }

// SetVersion sets the version.
func (v *StoredValue) SetVersion(version int64) { v.version = version }

// RevisionedValue is an embeddable struct that implements [Value] and also
// remembers the key's mod revision, set on every read and on every write that
// writes the version back. For a value that carries a mod revision, Update
// and DeleteValue compare the mod revision instead of the version, so a value
// read before its key was deleted and re-created can never overwrite or delete
// the new key (the ABA problem a version compare has).
//
// The cost: a value read from etcd is no longer reflect.DeepEqual to a
// hand-built one, because it holds a mod revision the hand-built one lacks.
// Compare fields, or zero the revision with SetVersion, in such tests.
type RevisionedValue struct {
	version     int64
	modRevision int64
}

// Version returns the etcd version of the value's key.
func (v *RevisionedValue) Version() int64 { return v.version }

// SetVersion sets the version and forgets the mod revision: a caller setting a
// version by hand asks for a version compare.
func (v *RevisionedValue) SetVersion(version int64) {
	v.version = version
	v.modRevision = 0
}

// ModRevision returns the mod revision of the key when the value was last
// read or written, or 0 if it has none.
func (v *RevisionedValue) ModRevision() int64 { return v.modRevision }

func (v *RevisionedValue) setModRevision(rev int64) { v.modRevision = rev }

// revisioned is implemented by values that embed RevisionedValue (the method
// is unexported, so only this package's type provides it).
type revisioned interface {
	ModRevision() int64
	setModRevision(rev int64)
}

// modRevisionOf returns the remembered mod revision of v, or 0.
func modRevisionOf(v any) int64 {
	if r, ok := v.(revisioned); ok {
		return r.ModRevision()
	}
	return 0
}

// setVersionAndRevision writes a key's version (and for a RevisionedValue its
// mod revision) into v. SetVersion goes first because it clears the revision.
func setVersionAndRevision(v Value, version, modRevision int64) {
	v.SetVersion(version)
	if r, ok := v.(revisioned); ok {
		r.setModRevision(modRevision)
	}
}

const (
	// compressThreshold is the encoded size from which values are stored
	// gzip-compressed. Part of the stored format shared with other services.
	compressThreshold = 2048
	// maxDecodedSize bounds what a gzip value may inflate to: a small stored
	// value can be a decompression bomb.
	maxDecodedSize = 64 << 20
	// maxPooledBuffer keeps rare huge buffers out of the pool.
	maxPooledBuffer = 1 << 20
)

var (
	errJSONNull     = errors.New("JSON null is not a value")
	errTooLarge     = fmt.Errorf("gzip value inflates past %d bytes", maxDecodedSize)
	gzipWriterPool  = sync.Pool{New: func() any { return gzip.NewWriter(io.Discard) }}
	gzipReaderPool  sync.Pool // *gzipReader
	bufferPool      = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	gzipMagic       = []byte{0x1f, 0x8b}
	jsonNullLiteral = []byte("null")
)

// gzipReader bundles what one decompression needs, so that a pooled entry
// makes the gzip step allocation-free.
type gzipReader struct {
	src bytes.Reader
	zr  gzip.Reader
	lim io.LimitedReader
}

// errNilValue refuses a nil value: it would be stored as JSON null, which
// no reader accepts, and has no version to compare.
var errNilValue = errors.New("nil value")

// isNil reports whether v is nil or a nil pointer.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

// jsonEncoder is a pooled encoder with the buffer it writes to.
type jsonEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var jsonEncoderPool = sync.Pool{New: func() any {
	e := new(jsonEncoder)
	e.enc = json.NewEncoder(&e.buf)
	return e
}}

// encodeValue returns the stored bytes of v, as the string a clientv3 put
// takes: its JSON, gzip-compressed when the JSON is compressThreshold bytes
// or longer. The JSON is written into a pooled buffer, so that the string
// is its one copy (json.Marshal would make another).
func encodeValue(key string, v any) (string, error) {
	e := jsonEncoderPool.Get().(*jsonEncoder)
	defer func() {
		if e.buf.Cap() <= maxPooledBuffer {
			e.buf.Reset()
			jsonEncoderPool.Put(e)
		}
	}()
	// Encode writes what json.Marshal returns, and a newline.
	if err := e.enc.Encode(v); err != nil {
		return "", fmt.Errorf("failed to encode %q: %w", key, err)
	}
	data := e.buf.Bytes()[:e.buf.Len()-1]
	if len(data) < compressThreshold {
		return string(data), nil
	}
	return string(compress(data)), nil
}

// compress gzips data (RFC 1952, readable by compress/gzip) with a pooled
// writer.
func compress(data []byte) []byte {
	out := bytes.NewBuffer(make([]byte, 0, len(data)/3+64))
	zw := gzipWriterPool.Get().(*gzip.Writer)
	zw.Reset(out)
	// Writes to a bytes.Buffer cannot fail.
	_, _ = zw.Write(data)
	_ = zw.Close()
	gzipWriterPool.Put(zw)
	return out.Bytes()
}

// decodeKV decodes the value of kv into a new V and sets its version (and
// mod revision). Stored bytes that cannot be decoded give an error naming the
// key, never a panic.
func decodeKV[V Value](kv *mvccpb.KeyValue) (V, error) {
	v, err := decodeBytes[V](kv.Value)
	if err != nil {
		// The key becomes a string only for the error: converting it on every
		// decode was a tenth of a small value's decode time.
		return v, decodeError(string(kv.Key), err)
	}
	setVersionAndRevision(v, kv.Version, kv.ModRevision)
	return v, nil
}

// decodeValue decodes the stored bytes of key into a new V.
func decodeValue[V Value](key string, data []byte) (V, error) {
	v, err := decodeBytes[V](data)
	if err != nil {
		return v, decodeError(key, err)
	}
	return v, nil
}

func decodeError(key string, err error) error {
	observeDecodeError()
	return fmt.Errorf("failed to decode %q: %w", key, err)
}

// decodeBytes decodes stored bytes into a new V: gzip when they start with
// the gzip magic, plain JSON otherwise. On error it returns the zero V.
func decodeBytes[V Value](data []byte) (V, error) {
	if !bytes.HasPrefix(data, gzipMagic) {
		return unmarshal[V](data)
	}
	buf := bufferPool.Get().(*bytes.Buffer)
	defer putBuffer(buf)
	if err := decompress(buf, data); err != nil {
		var zero V
		return zero, err
	}
	return unmarshal[V](buf.Bytes())
}

func unmarshal[V Value](data []byte) (V, error) {
	var zero V
	if bytes.Equal(bytes.TrimSpace(data), jsonNullLiteral) {
		// null would leave a nil V that panics on first use.
		return zero, errJSONNull
	}
	// V is nearly always a pointer to a struct: allocate the struct and
	// decode into it. Handing json a *V instead costs an allocation more
	// (the V escapes) and an indirection more, on every decode.
	if t := reflect.TypeFor[V](); t.Kind() == reflect.Pointer {
		v := reflect.New(t.Elem()).Interface().(V)
		if err := json.Unmarshal(data, v); err != nil {
			return zero, err
		}
		return v, nil
	}
	var v V
	if err := json.Unmarshal(data, &v); err != nil {
		return zero, err
	}
	return v, nil
}

// decompress inflates gzip data into buf, refusing more than maxDecodedSize.
func decompress(buf *bytes.Buffer, data []byte) error {
	r, _ := gzipReaderPool.Get().(*gzipReader)
	if r == nil {
		r = new(gzipReader)
	}
	defer gzipReaderPool.Put(r)
	r.src.Reset(data)
	if err := r.zr.Reset(&r.src); err != nil {
		return err
	}
	r.lim = io.LimitedReader{R: &r.zr, N: maxDecodedSize + 1}
	if _, err := buf.ReadFrom(&r.lim); err != nil {
		return err
	}
	if buf.Len() > maxDecodedSize {
		return errTooLarge
	}
	return nil
}

func putBuffer(buf *bytes.Buffer) {
	if buf.Cap() > maxPooledBuffer {
		return
	}
	buf.Reset()
	bufferPool.Put(buf)
}
