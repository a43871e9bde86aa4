package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// Exit codes, as the package doc lists them.
	exitOK    = 0
	exitError = 1
	exitUsage = 2

	defaultEndpoint = "127.0.0.1:2379"

	// probeKey is read (count only) to check that etcd answers before a
	// command starts. etcdctl's endpoint health reads the same key.
	probeKey = "health"
)

// run executes the command line args and returns the process exit code. It
// reads the environment (ETCDCTL_ENDPOINTS, ETCDCTL_PASSWORD) but no other
// process state, so tests run it in-process. ctx governs every request and
// ends a watch.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if args == nil {
		args = []string{} // cobra reads os.Args when given nil
	}
	root := newRootCmd(&app{stdin: stdin, stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "storagectl: %v\n", err)
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	}
	return exitError
}

// usageError is a command line the commands cannot run: run exits with
// exitUsage for it.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// usageArgs makes the errors of a cobra argument check usage errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// app is what every command shares: the I/O streams and the global flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	endpoints      string
	dialTimeout    time.Duration
	commandTimeout time.Duration
	cacert         string
	cert           string
	key            string
	user           string
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "storagectl",
		Short: "Read, write and watch github.com/etcdkit/storage values in etcd",
		Long: `storagectl reads, writes and watches the values that github.com/etcdkit/storage
keeps in etcd v3: JSON, gzip-compressed from 2048 bytes on. Values are decoded
and encoded exactly as the library does.

Exit codes: 0 success; 1 a request failed, a condition did not hold, or a
listed value could not be decoded; 2 usage error.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			return usagef("missing command")
		},
		SilenceErrors: true, // run prints them, and picks the exit code
		SilenceUsage:  true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	endpoints := os.Getenv("ETCDCTL_ENDPOINTS")
	if endpoints == "" {
		endpoints = defaultEndpoint
	}
	f := root.PersistentFlags()
	f.StringVar(&a.endpoints, "endpoints", endpoints, "comma-separated etcd endpoints; $ETCDCTL_ENDPOINTS sets the default")
	f.DurationVar(&a.dialTimeout, "dial-timeout", 5*time.Second, "time to connect to etcd and get a first answer")
	f.DurationVar(&a.commandTimeout, "command-timeout", 5*time.Second, "timeout of each request (a watch runs until interrupted)")
	f.StringVar(&a.cacert, "cacert", "", "verify the server's certificate with this CA bundle (PEM)")
	f.StringVar(&a.cert, "cert", "", "client certificate (PEM) for TLS client authentication")
	f.StringVar(&a.key, "key", "", "private key (PEM) of --cert")
	f.StringVar(&a.user, "user", "", "user[:password] for etcd authentication; without a password it is taken from $ETCDCTL_PASSWORD or asked on the terminal")

	root.AddCommand(newGetCmd(a), newPutCmd(a), newDelCmd(a), newWatchCmd(a), newStatsCmd(a))
	return root
}

// connect returns a client for the global flags once etcd has answered a
// first request within --dial-timeout. The caller closes the client.
//
// clientv3.New does not wait for a connection (without auth), and requests
// wait for one until their deadline: the first request is what makes an
// unreachable endpoint fail within the dial timeout instead of hanging a
// watch forever.
func (a *app) connect(ctx context.Context) (*clientv3.Client, error) {
	cfg, err := a.clientConfig()
	if err != nil {
		return nil, err
	}
	where := strings.Join(cfg.Endpoints, ",")
	attempts := new(attemptErrors)
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainUnaryInterceptor(attempts.intercept))
	client, err := clientv3.New(cfg) // with auth it gets a token within DialTimeout
	if err != nil {
		return nil, a.connectError(where, err, attempts.get())
	}
	probeCtx, cancel := context.WithTimeout(ctx, a.dialTimeout)
	defer cancel()
	_, err = client.Get(probeCtx, probeKey, clientv3.WithCountOnly())
	if err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) { // denied: it answered
		client.Close()
		return nil, a.connectError(where, err, attempts.get())
	}
	return client, nil
}

// connectError says why connecting failed: an etcd that did not answer in
// time (with the last connection error, when an attempt failed), or one that
// refused us.
func (a *app) connectError(where string, err error, lastAttempt string) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg := fmt.Sprintf("cannot reach etcd at %s within --dial-timeout %v", where, a.dialTimeout)
		if lastAttempt != "" {
			return fmt.Errorf("%s: %w (last error: %s)", msg, err, lastAttempt)
		}
		return fmt.Errorf("%s: %w", msg, err)
	}
	return fmt.Errorf("connect to etcd at %s: %w", where, err)
}

// attemptErrors remembers why the last attempt of a request failed to reach
// etcd. clientv3 retries a request while its connection fails and, at the
// deadline, reports only context.DeadlineExceeded: this keeps the reason
// (connection refused, an untrusted certificate, ...) for the message. Its
// interceptor runs inside clientv3's retry loop, once per attempt.
type attemptErrors struct {
	mu   sync.Mutex // protects last; attempts run on gRPC's goroutines
	last string
}

func (r *attemptErrors) intercept(ctx context.Context, method string, req, reply any,
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	st, ok := status.FromError(err)
	if err == nil || !ok {
		return err
	}
	// An attempt that waited for a connection until the deadline carries
	// gRPC's last connection error; one that failed fast is Unavailable.
	reason, waited := strings.CutPrefix(st.Message(), "latest balancer error: ")
	if waited || st.Code() == codes.Unavailable {
		r.mu.Lock()
		r.last = reason
		r.mu.Unlock()
	}
	return err
}

func (r *attemptErrors) get() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// clientConfig builds the clientv3 configuration from the global flags.
func (a *app) clientConfig() (clientv3.Config, error) {
	if a.dialTimeout <= 0 || a.commandTimeout <= 0 {
		return clientv3.Config{}, usagef("--dial-timeout and --command-timeout must be positive")
	}
	var endpoints []string
	for _, ep := range strings.Split(a.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			endpoints = append(endpoints, ep)
		}
	}
	if len(endpoints) == 0 {
		return clientv3.Config{}, usagef("--endpoints is empty")
	}
	tlsCfg, err := a.tlsConfig(endpoints)
	if err != nil {
		return clientv3.Config{}, err
	}
	user, password, err := a.credentials()
	if err != nil {
		return clientv3.Config{}, err
	}
	return clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: a.dialTimeout,
		TLS:         tlsCfg,
		Username:    user,
		Password:    password,
		// clientv3 logs at info level to stderr without one; every failure
		// it would log reaches the user as an error anyway.
		Logger: zap.NewNop(),
	}, nil
}

// tlsConfig returns the TLS configuration the TLS flags ask for, or nil when
// none is set. An https endpoint without flags still uses TLS, verified with
// the system's roots (clientv3 does that by itself).
func (a *app) tlsConfig(endpoints []string) (*tls.Config, error) {
	if a.cacert == "" && a.cert == "" && a.key == "" {
		return nil, nil
	}
	if (a.cert == "") != (a.key == "") {
		return nil, usagef("--cert and --key must be given together")
	}
	for _, ep := range endpoints {
		// clientv3 silently drops TLS for http:// endpoints.
		if u, err := url.Parse(ep); err == nil && u.Scheme == "http" {
			return nil, usagef("TLS flags given, but endpoint %s is http: use https://", ep)
		}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.cacert != "" {
		pem, err := os.ReadFile(a.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate found", a.cacert)
		}
		cfg.RootCAs = pool
	}
	if a.cert != "" {
		pair, err := tls.LoadX509KeyPair(a.cert, a.key)
		if err != nil {
			return nil, fmt.Errorf("--cert %s / --key %s: %w", a.cert, a.key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// credentials splits --user into user and password. A missing password comes
// from $ETCDCTL_PASSWORD, else from a prompt when stdin is a terminal. It is
// never read from a stdin that is not a terminal: put reads its JSON there.
func (a *app) credentials() (user, password string, err error) {
	if a.user == "" {
		return "", "", nil
	}
	user, password, ok := strings.Cut(a.user, ":")
	if user == "" {
		return "", "", usagef("--user %q: missing user name", a.user)
	}
	if !ok {
		if p, set := os.LookupEnv("ETCDCTL_PASSWORD"); set {
			password = p
		} else if password, err = a.askPassword(user); err != nil {
			return "", "", err
		}
	}
	if password == "" {
		// clientv3 would then connect without authenticating at all.
		return "", "", usagef("--user %s: empty password", user)
	}
	return user, password, nil
}

func (a *app) askPassword(user string) (string, error) {
	fd, ok := terminalFd(a.stdin)
	if !ok {
		return "", usagef("--user %s: no password: give --user %s:PASSWORD, set ETCDCTL_PASSWORD, or run on a terminal to be asked", user, user)
	}
	fmt.Fprintf(a.stderr, "Password for %s: ", user)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(a.stderr)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	return string(b), nil
}

// terminalFd returns the file descriptor of r if r is a terminal.
func terminalFd(r io.Reader) (int, bool) {
	f, ok := r.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}

// request returns the context of one request: ctx bounded by
// --command-timeout.
func (a *app) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.commandTimeout)
}

// target is the key or the prefix a command works on.
type target struct {
	key    string // the key, or the prefix with its trailing slash
	prefix bool
}

func (t target) String() string {
	if t.prefix {
		return fmt.Sprintf("prefix %q", t.key)
	}
	return t.key
}

// targetOf reads the KEY argument or the --prefix flag of cmd, exactly one of
// which must be given. `--prefix ""` is the whole keyspace.
func targetOf(cmd *cobra.Command, args []string) (target, error) {
	isPrefix := cmd.Flags().Changed("prefix")
	switch {
	case isPrefix && len(args) > 0:
		return target{}, usagef("give either KEY or --prefix, not both")
	case isPrefix:
		p, err := cmd.Flags().GetString("prefix")
		return target{key: withTrailingSlash(p), prefix: true}, err
	case len(args) == 0:
		return target{}, usagef("missing KEY or --prefix")
	case args[0] == "":
		return target{}, usagef("KEY must not be empty")
	}
	return target{key: args[0]}, nil
}

// withTrailingSlash applies the library's prefix rule, so that what the user
// sees is what every prefix op reads: "/a" covers "/a/..." and never "/ab".
func withTrailingSlash(prefix string) string {
	if prefix == "" || strings.HasSuffix(prefix, "/") {
		return prefix
	}
	return prefix + "/"
}
