package overlay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

// The stack counts the datagrams it drops for a socket that does not keep
// up, and those for a port no socket holds.
func TestNetstackStats(t *testing.T) {
	k, _ := identity.GeneratePrivateKey()
	addr := k.WireGuard().Public().Addr()
	backend, ns, err := NewNetstack(addr, 1420)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	if st := ns.Stats(); st != (NetstackStats{}) {
		t.Fatalf("a new stack's counters: %+v", st)
	}

	rx, err := ns.ListenUDP(netip.AddrPortFrom(addr, 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx, err := ns.DialUDP(netip.AddrPortFrom(addr, 0), netip.AddrPortFrom(addr, 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	payload := make([]byte, 1000)
	const sent = 2000 // 2 MB, several times a socket's receive buffer
	for range sent {
		if _, err := tx.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	nobody, err := ns.DialUDP(netip.AddrPortFrom(addr, 0), netip.AddrPortFrom(addr, 5001))
	if err != nil {
		t.Fatal(err)
	}
	defer nobody.Close()
	if _, err := nobody.Write(payload); err != nil {
		t.Fatal(err)
	}

	// Delivery is synchronous on the local path; allow a moment anyway.
	deadline := time.Now().Add(5 * time.Second)
	var st NetstackStats
	for {
		st = ns.Stats()
		if (st.UDPReceiveBufferDrops > 0 && st.UDPUnknownPort > 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.UDPReceiveBufferDrops == 0 || st.UDPReceiveBufferDrops >= sent || st.UDPUnknownPort != 1 {
		t.Fatalf("counters %+v after %d datagrams to a socket nobody read and one to no socket", st, sent)
	}
	// What was not dropped is there to read.
	rx.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2000)
	if n, _, err := rx.ReadFrom(buf); err != nil || n != len(payload) {
		t.Fatalf("read %d bytes, %v", n, err)
	}
}
