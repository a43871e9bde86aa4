package main

import (
	"fmt"

	"github.com/etcdkit/storage"
)

// The records of the demo's control plane. Each embeds StoredValue or
// RevisionedValue, which carry the etcd version and never appear in the JSON.

// Host is a machine's liveness record: it exists while the machine sends
// heartbeats (puts with a TTL).
type Host struct {
	storage.StoredValue
	Name string `json:"name"`
	Addr string `json:"addr"`
	Zone string `json:"zone"`
}

// Database is a database the control plane places on a host.
type Database struct {
	storage.StoredValue
	Name   string `json:"name"`
	Engine string `json:"engine"`
	SizeGB int    `json:"size_gb"`
	Host   string `json:"host,omitempty"`
}

// Assignment records that a database runs on a host.
type Assignment struct {
	storage.StoredValue
	Database string `json:"database"`
	Host     string `json:"host"`
}

// Inventory counts the database slots of a host.
type Inventory struct {
	storage.StoredValue
	Host  string `json:"host"`
	Slots int    `json:"slots"`
	Used  int    `json:"used"`
}

// Maintenance is a host's maintenance window. A window is deleted when it
// ends and a new one is created for the next, so the record embeds
// RevisionedValue: a copy read before the delete can never overwrite the new
// window, although both have version 1.
type Maintenance struct {
	storage.RevisionedValue
	Host   string `json:"host"`
	Reason string `json:"reason"`
}

// AccessConfig is a database's client access rules: a blob well over the
// 2048 bytes from which values are stored gzip-compressed.
type AccessConfig struct {
	storage.StoredValue
	Database string       `json:"database"`
	Rules    []AccessRule `json:"rules"`
}

// AccessRule lets the clients of a network use a database as a role.
type AccessRule struct {
	Role       string   `json:"role"`
	CIDR       string   `json:"cidr"`
	Method     string   `json:"method"`
	Privileges []string `json:"privileges"`
}

// The demo's keys, all under /demo/.
var (
	demoPrefix = storage.Prefix("demo")
	hostPrefix = storage.Prefix("demo", "hosts")
)

func hostKey(name string) string        { return storage.Key("demo", "hosts", name) }
func databaseKey(name string) string    { return storage.Key("demo", "databases", name) }
func assignmentKey(db string) string    { return storage.Key("demo", "assignments", db) }
func inventoryKey(host string) string   { return storage.Key("demo", "inventory", host) }
func maintenanceKey(host string) string { return storage.Key("demo", "maintenance", host) }
func accessKey(db string) string        { return storage.Key("demo", "access", db) }

// accessRules returns n rules for the application subnets of a database.
func accessRules(n int) []AccessRule {
	roles := []string{"app_rw", "app_ro", "reporting", "migrations"}
	privileges := map[string][]string{
		"app_rw":     {"SELECT", "INSERT", "UPDATE", "DELETE"},
		"app_ro":     {"SELECT"},
		"reporting":  {"SELECT"},
		"migrations": {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP"},
	}
	rules := make([]AccessRule, n)
	for i := range rules {
		role := roles[i%len(roles)]
		rules[i] = AccessRule{
			Role:       role,
			CIDR:       fmt.Sprintf("10.%d.%d.0/24", 20+i/16, i%16*16),
			Method:     "scram-sha-256",
			Privileges: privileges[role],
		}
	}
	return rules
}
