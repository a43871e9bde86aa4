package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/etcdkit/storage"
	"github.com/spf13/cobra"
)

// printer writes what the commands show: text for people (values compact on
// one line, or indented with --pretty), or with --json one JSON object per
// line for scripts.
type printer struct {
	w      io.Writer
	json   bool
	pretty bool
}

// outputFlags adds --json and --pretty to cmd; the printer reads them once
// the flags are parsed.
func outputFlags(cmd *cobra.Command, w io.Writer) *printer {
	p := &printer{w: w}
	cmd.Flags().BoolVar(&p.json, "json", false, "print one JSON object per line, for scripts")
	cmd.Flags().BoolVar(&p.pretty, "pretty", false, "indent JSON values")
	return p
}

// check refuses --json with --pretty: a --json line is one line.
func (p *printer) check() error {
	if p.json && p.pretty {
		return usagef("--json and --pretty exclude each other")
	}
	return nil
}

// itemJSON is the --json line of a key.
type itemJSON struct {
	Key         string          `json:"key"`
	Version     int64           `json:"version"`
	ModRevision int64           `json:"mod_revision"`
	StoredBytes int             `json:"stored_bytes"`
	Compressed  bool            `json:"compressed"`
	Value       json.RawMessage `json:"value,omitempty"`
	Error       string          `json:"error,omitempty"`
}

// item prints one key: a header line with its metadata, then its value or
// the reason it cannot be decoded.
func (p *printer) item(it item) error {
	if p.json {
		line := itemJSON{Key: it.key, Version: it.version, ModRevision: it.modRevision,
			StoredBytes: it.stored, Compressed: it.compressed, Value: it.value}
		if it.err != nil {
			line.Error = it.err.Error()
		}
		return p.line(line)
	}
	stored := fmt.Sprintf("%d bytes stored", it.stored)
	if it.compressed {
		stored += ", gzip"
	}
	if _, err := fmt.Fprintf(p.w, "%s (version %d, mod revision %d, %s)\n", it.key, it.version, it.modRevision, stored); err != nil {
		return err
	}
	if it.err != nil {
		_, err := fmt.Fprintf(p.w, "error: %v\n", it.err)
		return err
	}
	return p.value(it.value)
}

// eventJSON is the --json line of a watch event.
type eventJSON struct {
	Type     storage.EventType `json:"type"`
	Key      string            `json:"key"`
	Revision int64             `json:"revision"`
	Version  int64             `json:"version,omitempty"`
	Value    json.RawMessage   `json:"value,omitempty"`
	Error    string            `json:"error,omitempty"`
}

// event prints one watch event: its type, key and revision, and for a put the
// version and value.
func (p *printer) event(e *storage.Event[*jsonValue]) error {
	line := eventJSON{Type: e.Type, Key: e.Key, Revision: e.Revision}
	if e.Type == storage.EventTypePut {
		line.Version, line.Value = e.Value.Version(), e.Value.raw
	}
	if e.Err != nil {
		line.Error = e.Err.Error()
	}
	if p.json {
		return p.line(line)
	}
	var err error
	switch e.Type {
	case storage.EventTypePut:
		if _, err = fmt.Fprintf(p.w, "PUT %s (revision %d, version %d)\n", e.Key, e.Revision, line.Version); err == nil {
			err = p.value(line.Value)
		}
	case storage.EventTypeError:
		_, err = fmt.Fprintf(p.w, "ERROR %s (revision %d): %v\n", e.Key, e.Revision, e.Err)
	default:
		_, err = fmt.Fprintf(p.w, "%s %s (revision %d)\n", strings.ToUpper(string(e.Type)), e.Key, e.Revision)
	}
	return err
}

// statsJSON is the --json output of stats.
type statsJSON struct {
	Prefix                string  `json:"prefix"`
	Keys                  int     `json:"keys"`
	StoredBytes           int64   `json:"stored_bytes"`
	LargestKey            string  `json:"largest_key,omitempty"`
	LargestStoredBytes    int     `json:"largest_stored_bytes"`
	Compressed            int     `json:"compressed"`
	CompressedJSONBytes   int64   `json:"compressed_json_bytes"`
	CompressedStoredBytes int64   `json:"compressed_stored_bytes"`
	CompressionRatio      float64 `json:"compression_ratio,omitempty"`
	Undecodable           int     `json:"undecodable"`
}

func (p *printer) stats(s *prefixStats) error {
	out := statsJSON{
		Prefix: s.prefix, Keys: s.keys, StoredBytes: s.storedBytes,
		LargestKey: s.largestKey, LargestStoredBytes: s.largestStored,
		Compressed: s.compressed, CompressedJSONBytes: s.compressedJSON,
		CompressedStoredBytes: s.compressedStored, CompressionRatio: s.ratio(),
		Undecodable: s.undecodable,
	}
	if p.json {
		return p.line(out)
	}
	largest := "-"
	if s.keys > 0 {
		largest = fmt.Sprintf("%d bytes (%s)", s.largestStored, s.largestKey)
	}
	ratio := "-"
	if r := s.ratio(); r > 0 {
		ratio = fmt.Sprintf("%.2f (%d JSON bytes stored in %d)", r, s.compressedJSON, s.compressedStored)
	}
	_, err := fmt.Fprintf(p.w, "prefix:             %q\nkeys:               %d\nstored bytes:       %d\nlargest value:      %s\ncompressed:         %d\ncompression ratio:  %s\nundecodable:        %d\n",
		s.prefix, s.keys, s.storedBytes, largest, s.compressed, ratio, s.undecodable)
	return err
}

// value prints a JSON value on one line, or indented with --pretty.
func (p *printer) value(raw json.RawMessage) error {
	var buf bytes.Buffer
	var err error
	if p.pretty {
		err = json.Indent(&buf, raw, "", "  ")
	} else {
		err = json.Compact(&buf, raw)
	}
	if err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = p.w.Write(buf.Bytes())
	return err
}

// line writes v as one line of JSON. HTML characters stay as they are: the
// output is for terminals and scripts, not web pages.
func (p *printer) line(v any) error {
	enc := json.NewEncoder(p.w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
