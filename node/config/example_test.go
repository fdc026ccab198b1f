package config

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

// The sample configuration documents every key and loads as it stands,
// next to the files it names.
func TestExampleConfig(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("..", "..", "examples", "agent6.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range append(append([]string{}, topKeys...), peerKeys...) {
		// Set (`key:`, `- key:` in a list) or shown commented out (`# key:`),
		// with a comment line right above or on the line.
		re := regexp.MustCompile(`(?m)(^#[^\n]*\n(# )?\s*(- )?` + k + `:)|(^\s*(- )?` + k + `:[^\n]*#)`)
		if !re.Match(example) {
			t.Errorf("examples/agent6.yaml does not show %q with a comment", k)
		}
	}

	dir, k := setup(t)
	ca, err := identity.NewCA("example.org", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.Issue(identity.IssueRequest{Key: k.Public(), Name: "planner"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"bundle.pem":  ca.CertificatePEM(),
		"card.json":   []byte(`{"name": "planner", "skills": [{"id": "plan", "tags": ["travel"]}]}`),
		"agent6.yaml": example,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := identity.WriteCertificate(filepath.Join(dir, "agent.crt"), der, false); err != nil {
		t.Fatal(err)
	}
	c, err := Load(filepath.Join(dir, "agent6.yaml"))
	if err != nil {
		t.Fatalf("examples/agent6.yaml: %v", err)
	}
	if !c.Key.Equal(k) || c.TUN != DefaultTUN || c.LocalAPI != DefaultLocalAPI || c.StateDir != DefaultStateDir ||
		len(c.Peers) != 1 || len(c.Join) != 1 || c.Credential == nil || c.Card == nil || c.Card.Name != "planner" {
		t.Fatalf("examples/agent6.yaml loads as %+v", c)
	}
	if n := c.Node(nil); n.Dir != DefaultStateDir || n.Credential == nil {
		t.Fatalf("node from examples/agent6.yaml: %+v", n)
	}
}
