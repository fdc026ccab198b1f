package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/agent6/agent6/node"
)

// The text status shows every part of the JSON one, and no Go maps.
func TestStatusText(t *testing.T) {
	sock, self, tool := embedded(t)
	var out bytes.Buffer
	if err := runStatus([]string{"--socket", sock}, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if strings.Contains(text, "map[") {
		t.Errorf("status prints a raw map:\n%s", text)
	}
	for _, want := range []string{self.Addr().String(), self.PublicKey().String(), self.AgentKey().String(), "spiffe://example.org/agent/planner",
		"trust domain example.org", "joined", "refused", "catch-ups", "untracked", "held", "drops", "handshakes", "netstack", tool.Addr().String()} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	// Counters by name, sorted, zeros left out.
	st := node.Status{Addr: netip.MustParseAddr("2001:21::1"), Filter: node.FilterStatus{Drops: map[string]uint64{"spoofed_source": 3, "malformed": 2, "not_overlay": 0}},
		Membership: &node.MembershipStatus{Refused: map[string]uint64{}}}
	out.Reset()
	if err := writeStatus(&out, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			lines[f[0]] = strings.Join(f[1:], " ")
		}
	}
	if lines["drops"] != "malformed 2, spoofed_source 3" || lines["refused"] != "none" {
		t.Errorf("status counters:\n%s", out.String())
	}
	// Every JSON field has its line: the JSON keys of a full status, each
	// named by a label (or a table column) of the text.
	var full map[string]any
	b, _ := json.Marshal(st)
	json.Unmarshal(b, &full)
	labels := map[string]string{"address": "address", "public_key": "public key", "agent_key": "agent key", "listen_port": "listen port",
		"mode": "mode", "peers": "PEER ADDRESS", "filter": "filter", "handshakes": "handshakes", "membership": "members"}
	for k := range full {
		if l, ok := labels[k]; !ok || !strings.Contains(out.String(), l) {
			t.Errorf("JSON field %q has no line in the text", k)
		}
	}
}
