package identity_test

import (
	"fmt"
	"time"

	"github.com/agent6/agent6/identity"
)

// An organisation CA issues an agent its credential; any node holding the
// CA certificate in its trust bundle verifies it.
func ExampleCA_Issue() {
	now := time.Now()
	ca, err := identity.NewCA("example.org", 0, now)
	if err != nil {
		panic(err)
	}
	agent, _ := identity.PrivateKeyFromSeed(make([]byte, 32)) // use GeneratePrivateKey
	der, err := ca.Issue(identity.IssueRequest{
		Key:    agent.Public(),
		Name:   "alice",
		Groups: []string{"research"},
		Roles:  []string{identity.RoleRelay},
	}, now)
	if err != nil {
		panic(err)
	}

	bundle, err := identity.ParseBundle(ca.CertificatePEM())
	if err != nil {
		panic(err)
	}
	cred, err := bundle.Verify(der, now)
	if err != nil {
		panic(err)
	}
	fmt.Println(cred.ID, cred.Addr, cred.Groups, cred.HasRole(identity.RoleRelay))

	// Revoked before it expires: the CA signs a record that gossip spreads.
	rec, _ := ca.Revoke(der, now)
	rev, err := bundle.VerifyRevocation(rec)
	fmt.Println(err == nil && rev.Matches(cred))
	// Output:
	// spiffe://example.org/agent/alice 2001:21:7c5b:3a66:a787:3cef:4e2e:6589 [research] true
	// true
}
