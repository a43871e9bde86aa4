package main

import (
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

func newGetCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get (KEY | --prefix PREFIX)",
		Short: "Print values with their version and mod revision",
		Long: `Print a key, or every key under a prefix in key order, with its version, mod
revision, stored size and decoded JSON value. Compressed values are decompressed.

A value that cannot be decoded is shown with its key and the reason; the other
keys are still printed, and the exit code is 1. A prefix gets a trailing slash
if it has none, as in the library: --prefix /a covers /a/x, never /ab.
--prefix "" covers the whole keyspace. A missing KEY is an error.

With --json each key is one line:
  {"key":..,"version":..,"mod_revision":..,"stored_bytes":..,"compressed":..,"value":<json>}
  {"key":..,"version":..,"mod_revision":..,"stored_bytes":..,"compressed":..,"error":".."}`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
	}
	cmd.Flags().String("prefix", "", "print every key under this prefix")
	out := outputFlags(cmd, a.stdout)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := out.check(); err != nil {
			return err
		}
		t, err := targetOf(cmd, args)
		if err != nil {
			return err
		}
		client, err := a.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer client.Close()

		var total, failed int
		err = a.scan(cmd.Context(), client, t, func(kv *mvccpb.KeyValue) error {
			it := decodeItem(kv)
			total++
			if it.err != nil {
				failed++
			}
			return out.item(it)
		})
		if err != nil {
			return err
		}
		if failed > 0 {
			return undecodable(failed, total)
		}
		return nil
	}
	return cmd
}
