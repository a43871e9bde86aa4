// Command storagectl reads and writes the values that
// github.com/etcdkit/storage keeps in etcd v3. Those values are JSON,
// gzip-compressed from 2048 bytes on, so `etcdctl get` shows the larger ones
// as binary noise. storagectl decodes them the way the library does, shows
// each key with its version and mod revision, shows an undecodable value as
// such (with its key) instead of failing, and writes in the library's format.
//
//	storagectl get /app/config                 # one key, with version and mod revision
//	storagectl get --prefix /app --json        # one JSON object per key and line
//	storagectl put /app/config '{"replicas":3}' --if-version 4
//	storagectl put /app/big --from-file big.json --create
//	storagectl del --prefix /app/tmp --yes
//	storagectl watch --prefix /app             # until Ctrl-C
//	storagectl stats --prefix /app             # sizes, compression, undecodable values
//
// The commands:
//
//   - get KEY, get --prefix P: decoded values. --pretty indents them; --json
//     prints one object per key for scripts.
//   - watch KEY, watch --prefix P: the current values, then every change,
//     until Ctrl-C.
//   - put KEY [JSON]: the value from the argument, --from-file F or stdin.
//     --create fails if the key exists; --if-version N updates only version N.
//   - del KEY [--if-version N], del --prefix P --yes: a prefix delete asks
//     for --yes.
//   - stats --prefix P: key count, total and largest values, how many are
//     compressed, the compression ratio.
//
// The connection flags are etcdctl's: --endpoints, --dial-timeout,
// --command-timeout, --cacert, --cert, --key and --user. --endpoints
// defaults to $ETCDCTL_ENDPOINTS, then to 127.0.0.1:2379. The password of
// --user comes from $ETCDCTL_PASSWORD or a prompt. storagectl checks that
// etcd answers within --dial-timeout before it runs a command.
//
// Exit codes: 0 on success; 1 when a request fails, a write's condition does
// not hold, or a value that was listed could not be decoded (the listing
// still shows every other key); 2 for a usage error.
//
// docs/storagectl.md has a sample session against the demo's etcd.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// Ctrl-C ends a watch cleanly and cancels a request in flight.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
