package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

func runCAOK(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := runCA(args, &out); err != nil {
		t.Fatalf("agent6 ca %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

func TestCACommand(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	path := func(name string) string { return filepath.Join(dir, name) }

	out := runCAOK(t, "init", "--trust-domain", "example.org", "--out", caDir, "--ttl", "720h")
	if !strings.HasPrefix(out, "spiffe://example.org ") {
		t.Errorf("init printed %q", out)
	}
	bundle, err := identity.LoadBundle(filepath.Join(caDir, identity.CACertFile))
	if err != nil {
		t.Fatal(err)
	}

	// The agent's key: the CA may be given the private key file or only
	// the public key.
	k, err := identity.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WritePrivateKey(path("alice.key"), k, false); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path("bob.pub"), k.Public().MarshalPEM(), 0o644)
	addr, _ := k.Public().Addr()

	out = runCAOK(t, "issue", "--ca", caDir, "--key", path("alice.key"), "--name", "alice",
		"--group", "research", "--group", "eng", "--role", "relay", "--role", "waypoint", "--ttl", "1h", "--out", path("alice.crt"))
	if want := "spiffe://example.org/agent/alice " + addr.String() + "\n"; out != want {
		t.Errorf("issue printed %q, want %q", out, want)
	}
	der, err := identity.LoadCertificate(path("alice.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := bundle.Verify(der, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if cred.Name != "alice" || strings.Join(cred.Groups, ",") != "eng,research" ||
		!cred.HasRole(identity.RoleRelay) || !cred.HasRole(identity.RoleWaypoint) || cred.HasRole(identity.RoleAuditor) ||
		cred.NotAfter.Sub(cred.NotBefore) > time.Hour+2*time.Minute {
		t.Errorf("credential %+v", cred)
	}
	runCAOK(t, "issue", "--ca", caDir, "--key", path("bob.pub"), "--name", "bob", "--out", path("bob.crt"))
	bobDER, _ := identity.LoadCertificate(path("bob.crt"))
	bob, err := bundle.Verify(bobDER, time.Now())
	if err != nil || bob.ID != "spiffe://example.org/agent/bob" {
		t.Fatalf("bob: %v %v", bob, err)
	}

	out = runCAOK(t, "revoke", "--ca", caDir, "--cert", path("alice.crt"), "--out", path("alice.revocation"))
	if !strings.HasPrefix(out, "spiffe://example.org/agent/alice serial "+cred.Serial) {
		t.Errorf("revoke printed %q", out)
	}
	rec, err := identity.LoadRevocation(path("alice.revocation"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := bundle.VerifyRevocation(rec)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Matches(cred) || r.Matches(bob) {
		t.Error("the revocation does not name exactly alice's credential")
	}

	// Refusals: each names what is wrong.
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{nil, true, "subcommand"},
		{[]string{"frobnicate"}, true, "frobnicate"},
		{[]string{"init", "--out", path("ca2")}, true, "--trust-domain"},
		{[]string{"init", "--trust-domain", "example.org", "--out", caDir}, false, "--force"},
		{[]string{"init", "--trust-domain", "Example.org", "--out", path("ca3")}, false, "--trust-domain"},
		{[]string{"init", "--trust-domain", "example.org", "--out", path("ca3"), "extra"}, true, "extra"},
		{[]string{"issue", "--ca", caDir, "--key", path("alice.key"), "--name", "alice"}, true, "--out"},
		{[]string{"issue", "--ca", caDir, "--key", path("alice.key"), "--name", "alice", "--out", path("alice.crt")}, false, "--force"},
		{[]string{"issue", "--ca", caDir, "--key", path("alice.key"), "--name", "alice", "--role", "admin", "--out", path("x.crt")}, false, "admin"},
		{[]string{"issue", "--ca", caDir, "--key", path("alice.key"), "--name", "a/b", "--out", path("x.crt")}, false, "name"},
		{[]string{"issue", "--ca", caDir, "--key", path("missing.key"), "--name", "alice", "--out", path("x.crt")}, false, "--key"},
		{[]string{"issue", "--ca", path("nowhere"), "--key", path("alice.key"), "--name", "alice", "--out", path("x.crt")}, false, "--ca"},
		{[]string{"issue", "--ca", caDir, "--key", path("alice.crt"), "--name", "alice", "--out", path("x.crt")}, false, "alice.crt"},
		{[]string{"issue", "--ca", caDir, "--key", path("alice.key"), "--name", "alice", "--ttl", "-1h", "--out", path("x.crt")}, true, "--ttl"},
		{[]string{"revoke", "--ca", caDir, "--cert", path("alice.crt"), "--out", path("alice.revocation")}, false, "--force"},
		{[]string{"revoke", "--ca", caDir, "--cert", path("alice.key"), "--out", path("y")}, false, "--cert"},
	} {
		var out bytes.Buffer
		err := runCA(tc.args, &out)
		if err == nil {
			t.Errorf("agent6 ca %q succeeded", tc.args)
			continue
		}
		if errors.Is(err, errUsage) != tc.usage || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("agent6 ca %q: %v (usage error: %v), want %q", tc.args, err, errors.Is(err, errUsage), tc.want)
		}
	}
	if _, err := os.Stat(path("x.crt")); err == nil {
		t.Error("a refused issue wrote its output")
	}
	// The refused init left the CA alone.
	if b, err := identity.LoadBundle(filepath.Join(caDir, identity.CACertFile)); err != nil || b.MarshalPEM() == nil {
		t.Fatal(err)
	} else if _, err := b.Verify(der, time.Now()); err != nil {
		t.Errorf("the CA changed: %v", err)
	}

	// --force replaces.
	runCAOK(t, "issue", "--ca", caDir, "--key", path("alice.key"), "--name", "alice2", "--out", path("alice.crt"), "--force")
	runCAOK(t, "init", "--trust-domain", "example.org", "--out", caDir, "--force")
	if _, err := identity.LoadCA(caDir); err != nil {
		t.Fatal(err)
	}

	if err := runCA([]string{"issue", "-h"}, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}
