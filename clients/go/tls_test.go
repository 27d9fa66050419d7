package gonestsession

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key to dir; it returns the
// certificate's PEM and the two paths.
func selfSigned(t *testing.T, dir string) (certPEM []byte, certPath, keyPath string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gonest-sessiond test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certPEM, certPath, keyPath
}

func TestTLSWithTheDaemonsCertificateAndAToken(t *testing.T) {
	dir := t.TempDir()
	certPEM, certPath, keyPath := selfSigned(t, dir)
	tokenPath := filepath.Join(dir, "token")
	const token = "tls-test-token-0123456789abcdef"
	if err := os.WriteFile(tokenPath, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--tls-cert", certPath, "--tls-key", keyPath, "--auth-token-file", tokenPath)
	url := "https://" + d.addr

	store, err := Connect(url, WithCACertificate(certPEM), WithToken(token))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	session := NewSession(newID())
	_ = session.SetValue("over", "tls")
	if err := store.Save(session); err != nil {
		t.Fatal(err)
	}
	if read, err := store.Get(session.ID); err != nil || read == nil {
		t.Fatalf("Get over TLS: %v, %v", read, err)
	}

	// A certificate the client does not trust: no connection.
	if _, err := Connect(url, WithConnectTimeout(500*time.Millisecond)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("an untrusted certificate: %v, want ErrUnavailable", err)
	}
	// Plain HTTP/2 to a TLS port: no connection either.
	plain := "http://" + d.addr
	if _, err := Connect(plain, WithConnectTimeout(500*time.Millisecond)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("plain text to a TLS daemon: %v, want ErrUnavailable", err)
	}
}
