package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/agent6/agent6/identity"
)

var caCommands = map[string]command{
	"init":   {summary: "create a trust domain's CA: DIR/ca.crt (the trust bundle) and DIR/ca.key", run: runCAInit},
	"issue":  {summary: "issue an agent credential (X.509-SVID) for an agent key", run: runCAIssue},
	"revoke": {summary: "write a CA-signed revocation of a credential, for gossip", run: runCARevoke},
}

func runCA(args []string, stdout io.Writer) error { return dispatch("ca", caCommands, args, stdout) }

func runCAInit(args []string, stdout io.Writer) error {
	fs := newFlags("ca init", "--trust-domain DOMAIN --out DIR [--ttl 8760h] [--force]")
	td := fs.String("trust-domain", "", "the trust domain, e.g. example.org")
	out := fs.String("out", "", "directory for ca.crt (PEM, 0644) and ca.key (PKCS#8 PEM, 0600)")
	ttl := fs.Duration("ttl", identity.DefaultCATTL, "lifetime of the CA certificate")
	force := fs.Bool("force", false, "replace an existing CA")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *td == "" || *out == "" {
		return fmt.Errorf("%w: --trust-domain and --out are required", errUsage)
	}
	if *ttl <= 0 {
		return fmt.Errorf("%w: --ttl must be positive", errUsage)
	}
	ca, err := identity.NewCA(*td, *ttl, time.Now())
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if err := ca.WriteFiles(*out, *force); err != nil {
		if errors.Is(err, identity.ErrKeyExists) || errors.Is(err, identity.ErrFileExists) {
			return fmt.Errorf("--out: %w; pass --force to replace the CA (its credentials stop verifying)", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "spiffe://%s %s\n", ca.TrustDomain(), filepath.Join(*out, identity.CACertFile))
	return nil
}

func runCAIssue(args []string, stdout io.Writer) error {
	fs := newFlags("ca issue", "--ca DIR --key AGENT.key --name NAME [--group G]... [--role R]... [--ttl 24h] --out AGENT.crt [--force]")
	caDir := fs.String("ca", "", "CA directory (ca.crt, ca.key)")
	keyFile := fs.String("key", "", "the agent's key file (PKCS#8 PEM), or only its public key (PEM PUBLIC KEY, as openssl pkey -pubout writes)")
	name := fs.String("name", "", "agent name: the credential is spiffe://<trust-domain>/agent/<name>")
	var groups, roles stringList
	fs.Var(&groups, "group", "a group for policy (repeatable)")
	fs.Var(&roles, "role", "a role: waypoint, relay, auditor or policy (repeatable)")
	ttl := fs.Duration("ttl", identity.DefaultCredentialTTL, "lifetime of the credential (at most the CA's)")
	out := fs.String("out", "", "where to write the credential (PEM CERTIFICATE)")
	force := fs.Bool("force", false, "replace an existing file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *caDir == "" || *keyFile == "" || *name == "" || *out == "" {
		return fmt.Errorf("%w: --ca, --key, --name and --out are required", errUsage)
	}
	if *ttl <= 0 {
		return fmt.Errorf("%w: --ttl must be positive", errUsage)
	}
	ca, err := identity.LoadCA(*caDir)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	key, err := identity.LoadPublicKey(*keyFile)
	if err != nil {
		return fmt.Errorf("--key: %w", err)
	}
	now := time.Now()
	der, err := ca.Issue(identity.IssueRequest{Key: key, Name: *name, Groups: groups, Roles: roles, TTL: *ttl}, now)
	if err != nil {
		return err
	}
	bundle, err := identity.NewBundle(ca.Certificate())
	if err != nil {
		return err
	}
	cred, err := bundle.Verify(der, now)
	if err != nil {
		return fmt.Errorf("the new credential does not verify: %w", err)
	}
	if err := identity.WriteCertificate(*out, der, *force); err != nil {
		if errors.Is(err, identity.ErrFileExists) {
			return fmt.Errorf("--out: %w; pass --force to replace it", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "%s %s\n", cred.ID, cred.Addr)
	return nil
}

func runCARevoke(args []string, stdout io.Writer) error {
	fs := newFlags("ca revoke", "--ca DIR --cert AGENT.crt --out FILE [--force]")
	caDir := fs.String("ca", "", "CA directory (ca.crt, ca.key)")
	certFile := fs.String("cert", "", "the credential to revoke (PEM CERTIFICATE)")
	out := fs.String("out", "", "where to write the revocation (PEM AGENT6 REVOCATION)")
	force := fs.Bool("force", false, "replace an existing file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *caDir == "" || *certFile == "" || *out == "" {
		return fmt.Errorf("%w: --ca, --cert and --out are required", errUsage)
	}
	ca, err := identity.LoadCA(*caDir)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	der, err := identity.LoadCertificate(*certFile)
	if err != nil {
		return fmt.Errorf("--cert: %w", err)
	}
	rec, err := ca.Revoke(der, time.Now())
	if err != nil {
		return fmt.Errorf("--cert %s: %w", *certFile, err)
	}
	bundle, err := identity.NewBundle(ca.Certificate())
	if err != nil {
		return err
	}
	r, err := bundle.VerifyRevocation(rec)
	if err != nil {
		return fmt.Errorf("the new revocation does not verify: %w", err)
	}
	if err := identity.WriteRevocation(*out, rec, *force); err != nil {
		if errors.Is(err, identity.ErrFileExists) {
			return fmt.Errorf("--out: %w; pass --force to replace it", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "%s serial %s\n", r.ID, r.Serial)
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

func (l *stringList) Set(s string) error {
	if s == "" {
		return errors.New("empty value")
	}
	*l = append(*l, s)
	return nil
}
