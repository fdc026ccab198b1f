package membership

import (
	"bytes"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/agent6/agent6/identity"
)

func TestHelloFrames(t *testing.T) {
	k, _ := identity.GeneratePrivateKey()
	rec, err := newRecord(k, 1, []byte{0x30, 0}, nil, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := newNonce()
	b, err := sealHello(k, ctrlHello, n, nonce{}, 42, rec)
	if err != nil {
		t.Fatal(err)
	}
	h, err := openHello(b)
	if err != nil || h.typ != ctrlHello || h.nonce != n || h.ts != 42 || !bytes.Equal(h.record, rec) || h.verify() != nil {
		t.Fatalf("round trip: %+v %v", h, err)
	}
	ack, _ := sealHello(k, ctrlAck, newNonce(), n, 43, rec)
	if h, err := openHello(ack); err != nil || h.echo != n || h.verify() != nil {
		t.Fatalf("ack: %+v %v", h, err)
	}
	other, _ := identity.GeneratePrivateKey()
	otherRec, _ := newRecord(other, 1, []byte{0x30, 0}, nil, nil, time.Now())
	bad := map[string][]byte{
		"version 1":               append([]byte{ctrlMagic, 1}, b[2:]...),
		"HELLO that echoes":       mustSeal(t, k, ctrlHello, n, n, rec),
		"ACK that echoes nothing": mustSeal(t, k, ctrlAck, n, nonce{}, rec),
		"another key's record":    mustSeal(t, k, ctrlHello, n, nonce{}, otherRec),
		"header type differs":     append([]byte{ctrlMagic, ctrlVersion, ctrlAck}, b[3:]...),
		"truncated":               b[:len(b)-1],
		"empty":                   {},
	}
	for name, f := range bad {
		if _, err := openHello(f); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
	// A flipped bit in the signature opens (cheap checks pass) but does
	// not verify.
	forged := append([]byte(nil), b...)
	forged[len(forged)-1] ^= 1
	if h, err := openHello(forged); err != nil || h.verify() == nil {
		t.Fatalf("forged: %v, verify %v", err, h.verify())
	}
}

func mustSeal(t *testing.T, k identity.PrivateKey, typ byte, n, echo nonce, rec []byte) []byte {
	t.Helper()
	b, err := sealHello(k, typ, n, echo, 1, rec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPeerFrames(t *testing.T) {
	k, _ := identity.GeneratePrivateKey()
	to := netip.MustParseAddr("2001:21::7")
	task := netip.MustParseAddr("2001:21::8")
	b, err := sealPeer(k, frameEnd, to, 5, task.AsSlice())
	if err != nil {
		t.Fatal(err)
	}
	f, err := openPeer(b)
	if err != nil || f.typ != frameEnd || f.to != to || f.ts != 5 || f.taskAddr() != task || f.verify() != nil {
		t.Fatalf("round trip: %+v %v", f, err)
	}
	for name, frame := range map[string][]byte{
		"END without an address": mustPeer(t, k, frameEnd, to, nil),
		"LEAVE with a body":      mustPeer(t, k, frameLeave, to, []byte{1}),
		"an admission type":      append([]byte{ctrlMagic, ctrlVersion, ctrlHello}, b[3:]...),
		"unsigned, version 1":    {ctrlMagic, 1, frameLeave},
	} {
		if _, err := openPeer(frame); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
}

func mustPeer(t *testing.T, k identity.PrivateKey, typ byte, to netip.Addr, body []byte) []byte {
	t.Helper()
	b, err := sealPeer(k, typ, to, 1, body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFresh(t *testing.T) {
	now := time.Now()
	ns := now.UnixNano()
	for _, tc := range []struct {
		ts, last int64
		ok       bool
	}{
		{ns, 0, true},
		{ns, ns - 1, true},
		{ns, ns, false}, // not after the last: a replay
		{ns - int64(frameWindow) - 1, 0, false},
		{ns + int64(frameWindow) + 1, 0, false},
	} {
		if err := fresh(tc.ts, tc.last, now); (err == nil) != tc.ok {
			t.Errorf("fresh(%d, %d): %v", tc.ts-ns, tc.last-ns, err)
		}
	}
}

// recent accepts frames out of order but never one twice, nor one older
// than its window once full.
func TestRecent(t *testing.T) {
	now := time.Now()
	base := now.UnixNano()
	var r recent
	for i := range int64(40) {
		ts := base - 1000 + i*10
		if i%2 == 1 {
			ts -= 5 // out of order
		}
		if err := r.fresh(ts, now); err != nil {
			t.Fatalf("frame %d refused: %v", i, err)
		}
		r.add(ts)
		if r.fresh(ts, now) == nil {
			t.Fatalf("frame %d accepted twice", i)
		}
	}
	if r.fresh(base-1000, now) == nil {
		t.Fatal("a frame older than the window accepted")
	}
}

func TestExpiring(t *testing.T) {
	e := newExpiring[int, int](3)
	for i := range 5 {
		e.put(i, i)
	}
	if e.len() != 3 {
		t.Fatalf("len %d", e.len())
	}
	if _, ok := e.get(0); ok {
		t.Fatal("oldest not evicted")
	}
	if v, ok := e.take(4); !ok || v != 4 {
		t.Fatal("take")
	}
	e.expire(func(v int) bool { return v < 3 })
	if _, ok := e.get(2); ok || e.len() != 1 {
		t.Fatalf("expire: len %d", e.len())
	}
}

// FuzzFrames feeds admission and peer frames as they arrive from the
// network: whatever opens is internally consistent, and nothing panics.
func FuzzFrames(f *testing.F) {
	k, _ := identity.PrivateKeyFromSeed(make([]byte, 32))
	rec, _ := newRecord(k, 1, []byte{0x30, 0}, nil, nil, time.Unix(0, 0))
	h, _ := sealHello(k, ctrlHello, nonce{1}, nonce{}, 1, rec)
	p, _ := sealPeer(k, frameEnd, netip.MustParseAddr("2001:21::1"), 1, make([]byte, 16))
	f.Add(h)
	f.Add(p)
	f.Add([]byte{ctrlMagic, ctrlVersion, ctrlRefused})
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := openHello(b); err == nil {
			if h.typ != b[2] || !bytes.Equal(h.record[2:34], h.sr.Signer.Bytes()) {
				t.Fatalf("opened inconsistent HELLO %+v", h)
			}
		}
		if p, err := openPeer(b); err == nil {
			if p.typ != b[2] || (p.typ == frameEnd && len(p.body) != 16) {
				t.Fatalf("opened inconsistent peer frame %+v", p)
			}
		}
	})
}

// FuzzParseChain feeds DELEGATE bodies: whatever parses is a chain of
// depths 1, 2, ... rooted at the owner, each within its parent.
func FuzzParseChain(f *testing.F) {
	owner, _ := identity.PrivateKeyFromSeed(make([]byte, 32))
	seed := make([]byte, 32)
	seed[0] = 9
	task, _ := identity.PrivateKeyFromSeed(seed)
	exp := time.Unix(2e9, 0)
	l, _ := identity.Delegate(owner, task, identity.Delegation{Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp})
	f.Add(encodeLinks([][]byte{l.Marshal()}))
	f.Add([]byte{2, 0, 1, 0})
	now := time.Unix(1.9e9, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		chain, err := parseChain(b, owner.Public(), exp, now)
		if err != nil {
			return
		}
		for i, d := range chain {
			if d.Depth != i+1 || !d.Owner.Equal(owner.Public()) {
				t.Fatalf("link %d: %+v", i, d)
			}
			if i > 0 && d.Within(chain[i-1]) != nil {
				t.Fatalf("link %d wider than its parent", i)
			}
		}
	})
}

// BenchmarkRefuseOverLimit is what a frame costs from a source over its
// rate: the header check, the source's bucket, a counter; no copy, no
// queue, no signature check.
func BenchmarkRefuseOverLimit(b *testing.B) {
	m := &Membership{ctrl: make(chan event, ctrlQueue), ctrlLimit: newSourceLimiter(ctrlPerSource, ctrlBurst, ctrlTotal, ctrlTotalBurst, maxSources)}
	m.log = slog.New(slog.DiscardHandler)
	k, _ := identity.GeneratePrivateKey()
	rec, _ := newRecord(k, 1, make([]byte, 600), nil, nil, time.Now())
	frame, _ := sealHello(k, ctrlHello, newNonce(), nonce{}, time.Now().UnixNano(), rec)
	src := netip.MustParseAddrPort("192.0.2.1:4242")
	for range ctrlBurst + 1 { // spend the source's burst
		m.HandleControl(src, frame)
	}
	// Other sources fill the table, as in a flood from many.
	for i := range maxSources - 1 {
		m.ctrlLimit.allow(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 1), time.Now())
	}
	before := len(m.ctrl)
	start := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.HandleControl(src, frame)
	}
	b.StopTimer()
	// The bucket refills at ctrlPerSource a second meanwhile.
	if q, refill := len(m.ctrl)-before, int(time.Since(start).Seconds()*ctrlPerSource)+1; q > refill {
		b.Fatalf("%d frames queued from a source over its rate, %d refilled", q, refill)
	}
}
