// Command storagectl reads and writes the values that
// github.com/etcdkit/storage keeps in etcd v3. Those values are JSON,
// gzip-compressed from 2048 bytes on, so `etcdctl get` shows the larger ones
// as binary noise; storagectl decodes them the way the library does and
// writes them in the library's format.
//
//	storagectl get /app/config                 # one key, with version and mod revision
//	storagectl get --prefix /app --json        # one JSON object per key and line
//	storagectl put /app/config '{"replicas":3}' --if-version 4
//	storagectl put /app/big --from-file big.json --create
//	storagectl del --prefix /app/tmp --yes
//	storagectl watch --prefix /app             # until Ctrl-C
//	storagectl stats --prefix /app             # sizes, compression, undecodable values
//
// Exit codes: 0 on success; 1 when a request fails, a write's condition does
// not hold, or a value that was listed could not be decoded (the listing
// still shows every other key); 2 for a usage error.
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
