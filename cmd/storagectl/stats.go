package main

import (
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// prefixStats sums up the stored values under a prefix.
type prefixStats struct {
	prefix           string
	keys             int
	storedBytes      int64
	largestKey       string
	largestStored    int
	compressed       int   // values whose stored bytes start with the gzip magic
	compressedJSON   int64 // decoded JSON bytes of the compressed values that decode
	compressedStored int64 // stored bytes of the same values
	undecodable      int
}

func (s *prefixStats) add(it item) {
	s.keys++
	s.storedBytes += int64(it.stored)
	if s.keys == 1 || it.stored > s.largestStored {
		s.largestKey, s.largestStored = it.key, it.stored
	}
	if it.compressed {
		s.compressed++
	}
	if it.err != nil {
		s.undecodable++
		return
	}
	if it.compressed {
		s.compressedJSON += int64(len(it.value))
		s.compressedStored += int64(it.stored)
	}
}

// ratio is decoded JSON bytes per stored byte over the compressed values that
// decode, 0 when there are none.
func (s *prefixStats) ratio() float64 {
	if s.compressedStored == 0 {
		return 0
	}
	return float64(s.compressedJSON) / float64(s.compressedStored)
}

func newStatsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats --prefix PREFIX",
		Short: "Summarise the stored values under a prefix",
		Long: `Read every key under a prefix and print: the number of keys, the total and the
largest stored value size (bytes as stored in etcd), how many values are stored
gzip-compressed, their compression ratio (decoded JSON bytes / stored bytes, over
the compressed values that decode), and how many values cannot be decoded.

Undecodable values are counted, not errors: the exit code is 0. Use get to see
them. --prefix "" covers the whole keyspace.`,
		Args: usageArgs(cobra.NoArgs),
	}
	cmd.Flags().String("prefix", "", "the prefix to summarise")
	out := outputFlags(cmd, a.stdout)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := out.check(); err != nil {
			return err
		}
		if !cmd.Flags().Changed("prefix") {
			return usagef(`missing --prefix (--prefix "" for the whole keyspace)`)
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

		s := &prefixStats{prefix: t.key}
		err = a.scan(cmd.Context(), client, t, func(kv *mvccpb.KeyValue) error {
			s.add(decodeItem(kv))
			return nil
		})
		if err != nil {
			return err
		}
		return out.stats(s)
	}
	return cmd
}
