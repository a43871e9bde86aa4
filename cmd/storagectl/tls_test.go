package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdkit/storage/storagetest"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

func TestTLS(t *testing.T) {
	t.Parallel()
	certs := newTestCerts(t)
	ep := startTLSEtcd(t, certs)
	tlsFlags := []string{"--endpoints", ep, "--cacert", certs.ca, "--cert", certs.clientCert, "--key", certs.clientKey,
		"--dial-timeout", "30s", "--command-timeout", "30s"}

	t.Run("with the CA and a client certificate it works", func(t *testing.T) {
		r := storagectl(t, `{"secure":true}`, append(tlsFlags, "put", "/tls")...)
		require.Equal(t, 0, r.code)
		r = storagectl(t, "", append(tlsFlags, "get", "/tls")...)
		require.Equal(t, 0, r.code)
		require.Contains(t, r.stdout, `{"secure":true}`)
	})

	// A failed handshake is retried until --dial-timeout, then reported with
	// its reason: the timeout leaves a loaded machine time for a first one.
	t.Run("without --cacert the server is not trusted", func(t *testing.T) {
		t.Parallel()
		r := storagectl(t, "", "--endpoints", ep, "--cert", certs.clientCert, "--key", certs.clientKey,
			"--dial-timeout", "3s", "get", "/tls")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "cannot reach etcd at "+ep)
		require.Contains(t, r.stderr, "certificate signed by unknown authority")
	})

	t.Run("without a client certificate the server refuses", func(t *testing.T) {
		t.Parallel()
		r := storagectl(t, "", "--endpoints", ep, "--cacert", certs.ca, "--dial-timeout", "3s", "get", "/tls")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "cannot reach etcd at "+ep)
		// With TLS 1.3 the client ends its handshake before the server
		// checks its certificate: the attempt fails on the server's alert
		// ("certificate required") or on the closed connection, whichever
		// the client sees first.
		require.Contains(t, r.stderr, "(last error: ")
	})

	t.Run("an unreadable CA file is an error naming it", func(t *testing.T) {
		t.Parallel()
		r := storagectl(t, "", "--endpoints", ep, "--cacert", certs.clientKey, "get", "/tls")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "--cacert "+certs.clientKey+": no PEM certificate found")
	})
}

// startTLSEtcd starts etcd serving clients over TLS that requires client
// certificates, and returns its https endpoint.
//
// storagetest has no TLS option, but WithServerConfig can switch the client
// URL's scheme to https (host and port 0 stay as storagetest set them), and
// WithClientConfig gives the client made at start, which storagetest probes,
// the certificates it needs.
func startTLSEtcd(t *testing.T, certs testCerts) string {
	t.Helper()
	clientTLS, err := transport.TLSInfo{
		CertFile:      certs.clientCert,
		KeyFile:       certs.clientKey,
		TrustedCAFile: certs.ca,
	}.ClientConfig()
	require.NoError(t, err)
	ep, _ := startEtcd(t, storagetest.WithServerConfig(func(cfg *embed.Config) {
		for _, urls := range []*[]url.URL{&cfg.ListenClientUrls, &cfg.AdvertiseClientUrls} {
			for i := range *urls {
				(*urls)[i].Scheme = "https"
			}
		}
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       certs.serverCert,
			KeyFile:        certs.serverKey,
			TrustedCAFile:  certs.ca,
			ClientCertAuth: true,
		}
	}), storagetest.WithClientConfig(func(cfg *clientv3.Config) { cfg.TLS = clientTLS }))
	require.True(t, strings.HasPrefix(ep, "https://"), "endpoint %s", ep)
	return ep
}

// testCerts are the paths of PEM files made for one test.
type testCerts struct {
	ca                    string
	serverCert, serverKey string
	clientCert, clientKey string
}

// newTestCerts makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, both signed by the CA. etcd's own test certificates are not
// reachable from this module.
func newTestCerts(t *testing.T) testCerts {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "storagectl test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	issue := func(serial int64, name string, usage []x509.ExtKeyUsage, ips []net.IP) (certPath, keyPath string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, certPath, "CERTIFICATE", der)
		writePEM(t, keyPath, "PRIVATE KEY", keyDER)
		return certPath, keyPath
	}

	c := testCerts{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, c.ca, "CERTIFICATE", caDER)
	// The server's certificate is also a client one: etcd's gRPC gateway
	// dials the server with it when client certificates are required.
	c.serverCert, c.serverKey = issue(2, "server",
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, []net.IP{net.IPv4(127, 0, 0, 1)})
	c.clientCert, c.clientKey = issue(3, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return key
}

func writePEM(t *testing.T, path, blockType string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600))
}

func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}
