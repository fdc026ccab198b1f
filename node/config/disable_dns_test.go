package config

import (
	"errors"
	"testing"
)

func TestDisableDNS(t *testing.T) {
	dir, _ := setup(t)
	for body, want := range map[string]bool{
		"key: agent.key\n":                     false,
		"key: agent.key\ndisable_dns: false\n": false,
		"key: agent.key\ndisable_dns: true\n":  true,
	} {
		c, err := Load(write(t, dir, body))
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if c.DisableDNS != want || c.Node(nil).DisableDNS != want {
			t.Errorf("%q: DisableDNS = %v, node %v; want %v", body, c.DisableDNS, c.Node(nil).DisableDNS, want)
		}
	}
	_, err := Load(write(t, dir, "key: agent.key\ndisable_dns: maybe\n"))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("disable_dns: maybe: %v", err)
	}
}
