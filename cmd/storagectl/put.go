package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/etcdkit/storage"
	"github.com/spf13/cobra"
)

// maxInput bounds the JSON put reads: the library refuses to decode a value
// that inflates past 64 MiB, so a larger one could never be read back.
const maxInput = 64 << 20

func newPutCmd(a *app) *cobra.Command {
	var (
		fromFile  string
		create    bool
		ifVersion int64
	)
	cmd := &cobra.Command{
		Use:   "put KEY [JSON]",
		Short: "Store a JSON value, optionally only if the key is new or at a version",
		Long: `Store a JSON value at KEY in the library's format: as JSON, gzip-compressed when
it is 2048 bytes or longer. The value is the JSON argument, the file given with
--from-file ("-" for stdin), or else stdin. It must be one valid JSON document,
not null. It is stored compacted.

Without a condition the put is unconditional. With --create it succeeds only if
KEY does not exist; with --if-version N only if KEY's version is N (0: it does
not exist). Otherwise it fails, exit code 1, saying why.

On success it prints the key's new version and the put's revision.`,
		Args: usageArgs(cobra.RangeArgs(1, 2)),
	}
	cmd.Flags().StringVar(&fromFile, "from-file", "", `read the JSON from this file ("-": stdin)`)
	cmd.Flags().BoolVar(&create, "create", false, "fail if KEY exists")
	cmd.Flags().Int64Var(&ifVersion, "if-version", 0, "fail unless KEY's version is this (0: it does not exist)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		key := args[0]
		conditional := cmd.Flags().Changed("if-version")
		switch {
		case key == "":
			return usagef("KEY must not be empty")
		case create && conditional:
			return usagef("give either --create or --if-version, not both")
		case conditional && ifVersion < 0:
			return usagef("--if-version must not be negative")
		case len(args) == 2 && fromFile != "":
			return usagef("give the JSON either as an argument or with --from-file, not both")
		}
		input, err := a.readInput(args[1:], fromFile)
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		raw, err := parseJSON(input)
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}

		client, err := a.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer client.Close()

		val := &jsonValue{raw: raw}
		var op storage.PutOp[*jsonValue]
		switch {
		case create:
			op = storage.NewCreateOp(client, key, val)
		case conditional:
			val.SetVersion(ifVersion)
			op = storage.NewUpdateOp(client, key, val)
		default:
			op = storage.NewPutOp(client, key, val)
		}
		ctx, cancel := a.request(cmd.Context())
		defer cancel()
		if err := op.WithUpdatedVersion().Exec(ctx); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s: version %d, revision %d\n", key, val.Version(), op.Revision())
		return err
	}
	return cmd
}

// readInput returns the JSON argument if there is one, else the contents of
// fromFile, else stdin.
func (a *app) readInput(args []string, fromFile string) ([]byte, error) {
	if len(args) > 0 {
		return []byte(args[0]), nil
	}
	r, name := a.stdin, "stdin"
	if fromFile != "" && fromFile != "-" {
		f, err := os.Open(fromFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r, name = f, fromFile
	} else if _, ok := terminalFd(a.stdin); ok {
		fmt.Fprintln(a.stderr, "Reading JSON from the terminal; end with Ctrl-D.")
	}
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxInput {
		return nil, fmt.Errorf("%s: more than %d bytes of JSON", name, maxInput)
	}
	return data, nil
}

// parseJSON checks that data is one JSON document that the library can read
// back (it refuses null) and returns it without surrounding space.
func parseJSON(data []byte) (json.RawMessage, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, fmt.Errorf("no JSON given")
	}
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("input is not valid JSON: %w", err)
	}
	if string(data) == "null" {
		return nil, fmt.Errorf("JSON null cannot be stored: the library refuses to read it back")
	}
	return data, nil
}
