package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

// setup writes an agent key and returns the directory and the key.
func setup(t *testing.T) (string, identity.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	k, _ := identity.GeneratePrivateKey()
	if err := identity.WritePrivateKey(filepath.Join(dir, "agent.key"), k, false); err != nil {
		t.Fatal(err)
	}
	return dir, k
}

func write(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "agent6.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const peerKey = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="

func TestLoad(t *testing.T) {
	dir, k := setup(t)
	c, err := Load(write(t, dir, `
key: agent.key
listen_port: 51821
tun: a6test
mtu: 1400
localapi: /tmp/x.sock
log_level: debug
peers:
  - public_key: "`+peerKey+`"
    endpoint: "192.0.2.1:51820"
    persistent_keepalive: 25
  - public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE="
`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Key.Equal(k) || c.ListenPort != 51821 || c.TUN != "a6test" || c.MTU != 1400 || c.LocalAPI != "/tmp/x.sock" || c.LogLevel.String() != "DEBUG" {
		t.Fatalf("config = %+v", c)
	}
	if len(c.Peers) != 2 || c.Peers[0].PublicKey.String() != peerKey || c.Peers[0].Endpoint.String() != "192.0.2.1:51820" ||
		c.Peers[0].PersistentKeepalive != 25*time.Second || c.Peers[1].Endpoint.IsValid() {
		t.Fatalf("peers = %+v", c.Peers)
	}
	n := c.Node(nil)
	if n.TUN != "a6test" || n.ListenPort != 51821 || len(n.Peers) != 2 {
		t.Fatalf("node = %+v", n)
	}
}

func TestDefaults(t *testing.T) {
	dir, _ := setup(t)
	c, err := Load(write(t, dir, "key: "+filepath.Join(dir, "agent.key")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenPort != DefaultListenPort || c.TUN != DefaultTUN || c.MTU != 1420 || c.LocalAPI != DefaultLocalAPI || len(c.Peers) != 0 {
		t.Fatalf("defaults = %+v", c)
	}
}

// Every bad input is refused with the file and the field named.
func TestErrors(t *testing.T) {
	dir, k := setup(t)
	self := k.WireGuard().Public().String()
	for _, tc := range []struct{ body, field, msg string }{
		{"key: agent.key\nlisten_prot: 1\n", "listen_prot", "unknown key"},
		{"key: agent.key\npeers:\n  - public_key: " + peerKey + "\n    endpont: 1.2.3.4:5\n", "peers[0].endpont", "unknown key"},
		{"key: missing.key\n", "key", "no such file"},
		{"key: agent6.yaml\n", "key", "no PEM block"},
		{"key: agent.key\nlisten_port: 70000\n", "listen_port", "not a UDP port"},
		{"key: agent.key\nlisten_port: abc\n", "", "cannot unmarshal"},
		{"key: agent.key\nmtu: 1000\n", "mtu", "out of range"},
		{"key: agent.key\ntun: a/b\n", "tun", "not a valid interface name"},
		{"key: agent.key\nlog_level: loud\n", "log_level", "not one of"},
		{"key: agent.key\npeers:\n  - endpoint: 1.2.3.4:5\n", "peers[0].public_key", "missing"},
		{"key: agent.key\npeers:\n  - public_key: nope\n", "peers[0].public_key", "invalid key"},
		{"key: agent.key\npeers:\n  - public_key: " + peerKey + "\n    endpoint: example.com\n", "peers[0].endpoint", "not IP:port"},
		{"key: agent.key\npeers:\n  - public_key: " + peerKey + "\n    endpoint: 0.0.0.0:1\n", "peers[0].endpoint", "not a usable"},
		{"key: agent.key\npeers:\n  - public_key: " + peerKey + "\n  - public_key: " + peerKey + "\n", "peers[1].public_key", "same key as peers[0]"},
		{"key: agent.key\npeers:\n  - public_key: " + self + "\n", "peers[0].public_key", "own key"},
		{"key: agent.key\npeers: 3\n", "peers", "want a list"},
		{"- a\n- b\n", "", "not a YAML mapping"},
		{"key: [unclosed\n", "", "yaml"},
	} {
		path := write(t, dir, tc.body)
		_, err := Load(path)
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%q: err = %v, want *config.Error", tc.body, err)
			continue
		}
		if ce.File != path || ce.Field != tc.field || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: err = %v (field %q), want field %q containing %q", tc.body, err, ce.Field, tc.field, tc.msg)
		}
	}
	if _, err := Load(filepath.Join(dir, "nope.yaml")); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("key: agent.key\nlisten_port: 1\npeers:\n  - public_key: " + peerKey + "\n    endpoint: 192.0.2.1:1\n"))
	f.Add([]byte("peers: [{public_key: x}]"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("key: agent.key\nlocalapi_group: root\nlocalapi_admin_group: \"4242\"\nstate_dir: state\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data) // the key file never exists: only parsing is exercised
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
		var ce *Error
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("error %v is not a *config.Error", err)
		}
	})
}

func TestCredential(t *testing.T) {
	dir, k := setup(t)
	ca, err := identity.NewCA("example.org", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(filepath.Join(dir, "ca"), false); err != nil {
		t.Fatal(err)
	}
	der, _ := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: "a"}, time.Now())
	identity.WritePrivateKey(filepath.Join(dir, "other.key"), mustKey(t), false)
	if err := identity.WriteCertificate(filepath.Join(dir, "agent.crt"), der, false); err != nil {
		t.Fatal(err)
	}
	other, _ := identity.NewCA("other.org", time.Hour, time.Now())
	os.WriteFile(filepath.Join(dir, "other.pem"), other.CertificatePEM(), 0o644)
	tok := "agent6://" + peerKey + "@192.0.2.1:51820"

	c, err := Load(write(t, dir, "key: agent.key\ncredential: agent.crt\ntrust_bundle: ca/ca.crt\njoin: ["+tok+"]\nendpoints: [\"192.0.2.7:51820\"]\ngossip_port: 7000\n"))
	if err != nil {
		t.Fatal(err)
	}
	n := c.Node(nil)
	if n.Bundle == nil || len(n.Credential) == 0 || len(n.Join) != 1 || n.GossipPort != 7000 || n.Endpoints[0].String() != "192.0.2.7:51820" {
		t.Fatalf("node = %+v", n)
	}
	for _, tc := range []struct{ body, field, msg string }{
		{"key: agent.key\ncredential: agent.crt\n", "trust_bundle", "missing"},
		{"key: agent.key\ntrust_bundle: ca/ca.crt\n", "credential", "missing"},
		{"key: agent.key\njoin: [" + tok + "]\n", "join", "needs credential"},
		{"key: agent.key\ncredential: agent.crt\ntrust_bundle: other.pem\n", "credential", "does not verify"},
		{"key: other.key\ncredential: agent.crt\ntrust_bundle: ca/ca.crt\n", "credential", "another agent key"},
		{"key: agent.key\ncredential: nope.crt\ntrust_bundle: ca/ca.crt\n", "credential", "no such file"},
		{"key: agent.key\ncredential: agent.crt\ntrust_bundle: agent.key\n", "trust_bundle", ""},
		{"key: agent.key\ncredential: agent.crt\ntrust_bundle: ca/ca.crt\njoin: [\"agent6://x@1.2.3.4:5\"]\n", "join[0]", "bad join token"},
		{"key: agent.key\nendpoints: [\"0.0.0.0:1\"]\n", "endpoints[0]", "not a usable"},
		{"key: agent.key\ngossip_port: 0\n", "gossip_port", "not a port"},
	} {
		_, err := Load(write(t, dir, tc.body))
		var ce *Error
		if !errors.As(err, &ce) || ce.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: err = %v, want field %q containing %q", tc.body, err, tc.field, tc.msg)
		}
	}
}

func mustKey(t *testing.T) identity.PrivateKey {
	k, err := identity.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
