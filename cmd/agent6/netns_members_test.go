package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/internal/netns"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/membership"
)

func (s *sidecar) peers(t *testing.T) map[string]node.Member {
	out, err := exec.Command(s.bin, "peers", "--json", "--socket", s.socket).Output()
	if err != nil {
		return nil
	}
	var ms []node.Member
	if err := json.Unmarshal(out, &ms); err != nil {
		t.Fatalf("peers --json: %v\n%s", err, out)
	}
	m := map[string]node.Member{}
	for _, x := range ms {
		m[x.Addr.String()] = x
	}
	return m
}

func (s *sidecar) wgPeers(t *testing.T) map[string]bool {
	st, err := s.status(t)
	if err != nil {
		return nil
	}
	m := map[string]bool{}
	for _, p := range st.Peers {
		m[p.Addr.String()] = true
	}
	return m
}

// cli runs the agent6 binary outside any namespace (key, CA and LocalAPI
// commands), failing the test on error.
func cli(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("agent6 %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// orgSidecars starts one sidecar per namespace, each with a credential
// from one CA (trust domain example.org) under the given agent name: the
// first is the seed, the others join through its token. It returns once
// every sidecar admits every other, with the token.
func orgSidecars(t *testing.T, bin string, nss []*netns.NS, names []string) ([]*sidecar, string) {
	t.Helper()
	caDir := filepath.Join(t.TempDir(), "ca")
	cli(t, bin, "ca", "init", "--trust-domain", "example.org", "--out", caDir)
	cars := make([]*sidecar, len(nss))
	for i, ns := range nss {
		cars[i] = newSidecar(t, bin, ns)
		cli(t, bin, "ca", "issue", "--ca", caDir, "--key", cars[i].key, "--name", names[i], "--out", filepath.Join(cars[i].dir, "agent.crt"))
	}
	creds := fmt.Sprintf("credential: agent.crt\ntrust_bundle: %s\n", filepath.Join(caDir, "ca.crt"))
	cars[0].start(t, creds)
	token := cli(t, bin, "invite", "--socket", cars[0].socket)
	for _, s := range cars[1:] {
		s.start(t, creds+fmt.Sprintf("join: [%q]\n", token))
	}
	eventually(t, 30*time.Second, "the sidecars admitting each other", allAlive(t, cars))
	return cars, token
}

// allAlive reports whether every sidecar lists every other as alive.
func allAlive(t *testing.T, cars []*sidecar) func() bool {
	return func() bool {
		for _, s := range cars {
			p := s.peers(t)
			for _, o := range cars {
				if o != s && p[o.addr.String()].State != "alive" {
					return false
				}
			}
		}
		return true
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(start)
}

// TestMembershipNetns: four sidecars in four namespaces on one LAN, one
// seed token; every pair pings; kill -9 of one is seen as dead and its
// WireGuard peer removed everywhere; restarted with the same key it
// rejoins.
func TestMembershipNetns(t *testing.T) {
	requireNetns(t, "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildAgent6(t)
	lan, err := netns.NewLAN(ctx, "a6m", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer lan.Close()

	names := []string{"agent-0", "agent-1", "agent-2", "agent-3"}
	cars, token := orgSidecars(t, bin, lan.Nodes, names)
	if !strings.HasPrefix(token, "agent6://"+cars[0].pubkey+"@"+lan.Nodes[0].Addr.String()+":51820") {
		t.Fatalf("invite printed %q", token)
	}
	took := eventually(t, 30*time.Second, "four sidecars admitting each other", allAlive(t, cars))
	t.Logf("4 sidecars converged in %v", took.Round(time.Millisecond))
	for _, s := range cars {
		for _, o := range cars {
			if s == o {
				continue
			}
			if out, err := s.ns.Run(ctx, "ping", "-6", "-c", "1", "-W", "5", o.addr.String()); err != nil {
				t.Fatalf("ping6 %s -> %s: %v\n%s", s.ns.Name, o.addr, err, out)
			}
		}
	}
	for _, m := range cars[1].peers(t) {
		if m.TrustDomain != "example.org" || !strings.HasPrefix(m.ID, "spiffe://example.org/agent/agent-") {
			t.Fatalf("peer without organisation identity: %+v", m)
		}
	}

	// A process on agent-1's host binds agent-1's overlay address, as any
	// process there can, and tells agent-2 that agent-1 is leaving: once
	// unsigned (the old frame), once signed with a key of its own. agent-2
	// refuses both, counts them, and keeps agent-1.
	localProcessCannotEvict(t, cars[1], cars[2])

	// kill -9 the last one: the others see it dead and drop its peer.
	victim := cars[3]
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.cmd.Wait()
	took = eventually(t, 60*time.Second, "the killed sidecar removed everywhere", func() bool {
		for _, s := range cars[:3] {
			if st := s.peers(t)[victim.addr.String()].State; st != "dead" {
				return false
			}
			if s.wgPeers(t)[victim.addr.String()] {
				return false
			}
		}
		return true
	})
	t.Logf("kill -9 seen as dead, WireGuard peer removed, after %v", took.Round(time.Millisecond))

	// Restarted with the same key, it rejoins.
	victim.start(t, victim.extra)
	took = eventually(t, 60*time.Second, "the restarted sidecar readmitted", allAlive(t, cars))
	t.Logf("restarted sidecar readmitted in %v", took.Round(time.Millisecond))
	if out, err := cars[1].ns.Run(ctx, "ping", "-6", "-c", "1", "-W", "5", victim.addr.String()); err != nil {
		t.Fatalf("ping6 to the restarted sidecar: %v\n%s", err, out)
	}
	for _, s := range cars {
		s.stop(t)
	}
}

// localProcessCannotEvict sends, from a socket on from's overlay address in
// from's namespace (not the daemon's), LEAVE frames to to's task port, and
// checks that to refuses them and still lists from as alive.
func localProcessCannotEvict(t *testing.T, from, to *sidecar) {
	t.Helper()
	stranger, _ := identity.GeneratePrivateKey()
	forged, err := membership.PeerFrame(stranger, "leave", to.addr, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	before, err := to.status(t)
	if err != nil {
		t.Fatal(err)
	}
	err = from.ns.Do(func() error {
		c, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from.addr, 9999)))
		if err != nil {
			return err
		}
		defer c.Close()
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.addr, membership.TaskPort))
		for _, f := range [][]byte{{0xa6, 1, 6}, forged} {
			if _, err := c.WriteToUDP(f, dst); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("a local process on %s: %v", from.ns.Name, err)
	}
	eventually(t, 10*time.Second, "both LEAVEs refused", func() bool {
		st, err := to.status(t)
		if err != nil {
			return false
		}
		r, b := st.Membership.Refused, before.Membership.Refused
		return r["malformed"] > b["malformed"] && r["bad_signature"] > b["bad_signature"]
	})
	time.Sleep(time.Second) // time for a wrongly taken LEAVE to show
	if st := to.peers(t)[from.addr.String()].State; st != "alive" {
		t.Fatalf("%s sees %s as %q after a local process's LEAVE", to.ns.Name, from.ns.Name, st)
	}
}
