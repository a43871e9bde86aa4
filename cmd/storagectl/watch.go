package main

import (
	"github.com/etcdkit/storage"
	"github.com/spf13/cobra"
)

func newWatchCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "watch (KEY | --prefix PREFIX)",
		Short: "Print the current values, then every change, until interrupted",
		Long: `Print the current value of a key or of every key under a prefix (as PUT events
at the revision of that read), then every change as it happens: PUT with the
key's version and value, DELETE, or ERROR for a value that cannot be decoded.
Each event shows its revision. The watch survives dropped connections, restarts
and compactions, as the library's watch does, and runs until Ctrl-C.

--command-timeout does not apply; --dial-timeout bounds the first connection.
The exit code is 0 after Ctrl-C, or 1 if any value could not be decoded or the
watch failed.

With --json each event is one line:
  {"type":"put","key":..,"revision":..,"version":..,"value":<json>}
  {"type":"delete","key":..,"revision":..}
  {"type":"error","key":..,"revision":..,"error":".."}`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
	}
	cmd.Flags().String("prefix", "", "watch every key under this prefix")
	out := outputFlags(cmd, a.stdout)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := out.check(); err != nil {
			return err
		}
		t, err := targetOf(cmd, args)
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		client, err := a.connect(ctx)
		if err != nil {
			return err
		}
		defer client.Close()

		op := storage.NewWatchOp[*jsonValue](client, t.key)
		if t.prefix {
			op = storage.NewWatchPrefixOp[*jsonValue](client, t.key)
		}
		failed := 0 // only the watch's goroutine touches it until Close returns
		handle := func(e *storage.Event[*jsonValue]) error {
			if e.Type == storage.EventTypeError {
				failed++
			}
			return out.event(e)
		}
		if err := op.Watch(ctx, handle); err != nil {
			return err
		}
		select {
		case <-ctx.Done(): // interrupted: the normal end
		case err = <-op.Error():
			if ctx.Err() != nil {
				err = nil // the run reports the end of ctx too
			}
		}
		op.Close() // waits for the handler: failed is ours from here on
		if err != nil {
			return err
		}
		if failed > 0 {
			return undecodable(failed, 0)
		}
		return nil
	}
	return cmd
}
