package main

import (
	"fmt"

	"github.com/etcdkit/storage"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newDelCmd(a *app) *cobra.Command {
	var (
		ifVersion int64
		yes       bool
	)
	cmd := &cobra.Command{
		Use:     "del (KEY [--if-version N] | --prefix PREFIX --yes)",
		Aliases: []string{"delete"},
		Short:   "Delete a key, or every key under a prefix",
		Long: `Delete KEY, or every key under a prefix, and print how many keys were deleted.
Deleting a missing KEY deletes nothing and is not an error.

With --if-version N the key is deleted only if its version is N; otherwise the
command fails (exit code 1) saying so.

Deleting a prefix needs --yes: without it the command only says how many keys
it would delete, and exits with code 2. A prefix gets a trailing slash if it has
none (--prefix /a deletes /a/x, never /ab); the whole keyspace ("" or "/") is
never deleted.`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
	}
	cmd.Flags().String("prefix", "", "delete every key under this prefix (needs --yes)")
	cmd.Flags().Int64Var(&ifVersion, "if-version", 0, "delete KEY only if its version is this")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm deleting a prefix")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		t, err := targetOf(cmd, args)
		if err != nil {
			return err
		}
		conditional := cmd.Flags().Changed("if-version")
		switch {
		case t.prefix && conditional:
			return usagef("--if-version applies to one KEY, not to --prefix")
		case conditional && ifVersion < 1:
			return usagef("--if-version must be at least 1 (version 0 is a key that does not exist)")
		case t.prefix && (t.key == "" || t.key == "/"):
			return usagef("refusing to delete the whole keyspace (prefix %q)", t.key)
		}

		client, err := a.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer client.Close()

		switch {
		case t.prefix && !yes:
			return a.refuseDeletePrefix(cmd, client, t.key)
		case t.prefix:
			return a.deleteKeys(cmd, storage.NewDeletePrefixOp(client, t.key), "under "+t.key)
		case conditional:
			val := &jsonValue{}
			val.SetVersion(ifVersion)
			op := storage.NewDeleteValueOp(client, t.key, val)
			ctx, cancel := a.request(cmd.Context())
			defer cancel()
			if err := op.Exec(ctx); err != nil {
				return err
			}
			_, err := fmt.Fprintf(a.stdout, "deleted %s (version %d), revision %d\n", t.key, ifVersion, op.Revision())
			return err
		}
		return a.deleteKeys(cmd, storage.NewDeleteKeyOp(client, t.key), t.key)
	}
	return cmd
}

func (a *app) deleteKeys(cmd *cobra.Command, op storage.DeleteOp, what string) error {
	ctx, cancel := a.request(cmd.Context())
	defer cancel()
	n, err := op.Exec(ctx)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "deleted %d %s %s, revision %d\n", n, plural(n, "key"), what, op.Revision())
	return err
}

// refuseDeletePrefix is del --prefix without --yes: it counts what would go,
// so the user can judge, and refuses.
func (a *app) refuseDeletePrefix(cmd *cobra.Command, client *clientv3.Client, prefix string) error {
	resp, err := a.get(cmd.Context(), client, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("count keys under %s: %w", prefix, err)
	}
	return usagef("refusing to delete %d %s under %s without --yes", resp.Count, plural(resp.Count, "key"), prefix)
}

func plural(n int64, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
