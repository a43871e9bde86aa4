package observe

// The label values of the reports, as small integers so that an adapter can
// keep its series in arrays; String gives each its name in snake case.

// Op names a storage operation.
type Op uint8

// The ops. A Cache's reads count as OpGet and OpGetPrefix, its writes as the
// ops they are; ops inside a Txn count only as the OpTxn.
const (
	OpPut Op = iota
	OpCreate
	OpUpdate
	OpGet
	OpGetMultiple
	OpGetPrefix
	OpGetRange
	OpExists
	OpDeleteKey
	OpDeleteValue
	OpDeletePrefix
	OpTxn
	NumOps // the number of ops
)

var opNames = [NumOps]string{"put", "create", "update", "get", "get_multiple", "get_prefix", "get_range",
	"exists", "delete_key", "delete_value", "delete_prefix", "txn"}

func (o Op) String() string { return opNames[o] }

// Outcome is how an op ended.
type Outcome uint8

// The outcomes.
const (
	OK Outcome = iota
	NotFound
	AlreadyExists
	VersionMismatch
	ConstraintViolated
	DuplicateKeys
	Invalid
	Error
	NumOutcomes // the number of outcomes
)

var outcomeNames = [NumOutcomes]string{"ok", "not_found", "already_exists", "version_mismatch",
	"constraint_violated", "duplicate_keys", "invalid", "error"}

func (o Outcome) String() string { return outcomeNames[o] }

// Source is what watch events were delivered to.
type Source uint8

// The sources.
const (
	SourceWatch Source = iota // a WatchOp's handler
	SourceCache               // a Cache
	NumSources                // the number of sources
)

var sourceNames = [NumSources]string{"watch", "cache"}

func (s Source) String() string { return sourceNames[s] }

// Restart is why a watch restarts.
type Restart uint8

// The restart reasons: each restart counts under one.
const (
	RestartResume  Restart = iota // resumed from the last delivered revision after a failure
	RestartRelist                 // re-read, etcd having compacted past that revision
	RestartBacklog                // resumed after cancelling its stream for a lagging handler
	NumRestarts                   // the number of restart reasons
)

var restartNames = [NumRestarts]string{"resume", "relist", "backlog"}

func (r Restart) String() string { return restartNames[r] }

// Stop is why a watch run ended.
type Stop uint8

// The stop reasons.
const (
	StopClosed       Stop = iota // Close (or a cache's Stop) ended the running watch
	StopContext                  // the context given to Watch or Start ended
	StopClientClosed             // the etcd client was closed
	StopAuth                     // authentication failed or permission was denied
	StopHandler                  // the handler returned an error
	StopOther                    // anything else retrying cannot fix
	NumStops                     // the number of stop reasons
)

var stopNames = [NumStops]string{"closed", "context", "client_closed", "auth", "handler", "other"}

func (s Stop) String() string { return stopNames[s] }
