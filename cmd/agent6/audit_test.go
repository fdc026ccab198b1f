package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/audit"
)

func TestAuditCommands(t *testing.T) {
	tmp := t.TempDir()
	keyFile := filepath.Join(tmp, "agent.key")
	k, _ := identity.GeneratePrivateKey()
	if err := identity.WritePrivateKey(keyFile, k, false); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runAudit(args, &out)
		return out.String(), err
	}

	out, err := run("vkey", "--key", keyFile, "--trust-domain", "example.org")
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(out))
	if err != nil || !strings.HasPrefix(v.Name(), "example.org/agent6/audit/") {
		t.Fatalf("vkey printed %q: %v", out, err)
	}
	out, err = run("vkey", "--key", keyFile, "--witness")
	if err != nil {
		t.Fatal(err)
	}
	if w, err := audit.NewCosignatureVerifier(strings.TrimSpace(out)); err != nil || !strings.HasPrefix(w.Name(), audit.NoTrustDomain+"/agent6/witness/") {
		t.Fatalf("vkey --witness printed %q: %v", out, err)
	}
	if _, err := run("vkey"); !errors.Is(err, errUsage) {
		t.Fatalf("vkey without --key: %v", err)
	}
	if _, err := run("vkey", "--key", keyFile, "--trust-domain", "Not A Domain"); err == nil {
		t.Fatal("bad trust domain accepted")
	}

	// A log the node wrote, verified offline with the key vkey printed.
	dir := filepath.Join(tmp, "audit")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := audit.Open(ctx, audit.Config{Key: k, TrustDomain: "example.org", Storage: audit.POSIX(dir), CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := k.Public().Addr()
	for i := range 20 {
		r := audit.Record{Kind: audit.KindAdmission, Time: time.Unix(1_800_000_000, int64(i)), Subject: addr, Outcome: audit.OutcomeAdmitted}
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	vkey, _ := run("vkey", "--key", keyFile, "--trust-domain", "example.org")
	out, err = run("verify", "--dir", dir, "--vkey", strings.TrimSpace(vkey))
	if err != nil || !strings.HasPrefix(out, "ok: example.org/agent6/audit/") || !strings.Contains(out, "admission 20") {
		t.Fatalf("verify: %q %v", out, err)
	}
	out, err = run("verify", "--dir", dir, "--json")
	var rep struct {
		Size       uint64 `json:"size"`
		KeyFromDir bool   `json:"key_from_dir"`
	}
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Size != 20 || !rep.KeyFromDir {
		t.Fatalf("verify --json: %q %v", out, err)
	}
	// Another node's key does not verify this log.
	otherVkey, _ := run("vkey", "--key", keyFile)
	if _, err := run("verify", "--dir", dir, "--vkey", strings.TrimSpace(otherVkey)); err == nil {
		t.Fatal("verify with another origin's key passed")
	}
	// A changed entry fails.
	bundle := filepath.Join(dir, "tile", "entries", "000.p", "20")
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	b[5] ^= 1
	os.WriteFile(bundle, b, 0o644)
	if _, err := run("verify", "--dir", dir); err == nil {
		t.Fatal("verify passed a changed entry")
	}
	if _, err := run("verify"); !errors.Is(err, errUsage) {
		t.Fatalf("verify without --dir: %v", err)
	}
	if _, err := run("bogus"); !errors.Is(err, errUsage) {
		t.Fatalf("unknown subcommand: %v", err)
	}
}
