package overlay

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/agent6/agent6/identity"
)

// relayClient is this node's binding at a member relay. Its fields after
// mac are guarded by Paths.mu.
type relayClient struct {
	srv RelayServer
	ep  *conn.StdNetEndpoint
	mac [32]byte // the binding's key, from this node's and the relay's static keys

	bound    bool
	boundAt  time.Time
	lastBind time.Time
	stamp    uint64         // of the last bind sent
	observed netip.AddrPort // this node's address as the relay sees it
}

// tendRelay binds, or refreshes the binding, when due. Called with p.mu
// held.
func (p *Paths) tendRelay(rc *relayClient, now time.Time) {
	if rc.bound && now.Sub(rc.boundAt) > bindLost {
		rc.bound = false
		p.log.Info("relay binding lost", "endpoint", rc.srv.Addr)
	}
	due := bindEvery
	if !rc.bound {
		due = bindRetry
	}
	if now.Sub(rc.lastBind) < due {
		return
	}
	p.bind(rc, now)
}

// bind sends a binding request to rc. Called with p.mu held.
func (p *Paths) bind(rc *relayClient, now time.Time) {
	// The stamp only grows, even if the clock steps back: the relay
	// refuses one not above the last it took.
	rc.stamp = max(uint64(now.UnixNano()), rc.stamp+1)
	rc.lastBind = now
	_ = p.b.sendRaw(rc.srv.Addr, appendBind(make([]byte, 0, bindSize), &rc.mac, p.pub, rc.stamp))
}

// relayAnswer handles a bound or refused frame from relay rc.
func (p *Paths) relayAnswer(rc *relayClient, f pathFrame, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch f.typ {
	case frameBound:
		if f.stamp != rc.stamp || !f.verify(&rc.mac) {
			p.counters.badMAC.Add(1)
			return
		}
		if !rc.bound {
			p.log.Debug("relay bound", "endpoint", rc.srv.Addr, "addr", f.observed)
		}
		rc.bound, rc.boundAt, rc.observed = true, now, f.observed
		for _, e := range p.peers {
			if e.known {
				p.choose(e, now)
			}
		}
	case frameRefused:
		// Unauthenticated: anyone can send one. The worst it does is
		// make this node bind again, at most once a second.
		p.counters.relayRefusals.Add(1)
		switch f.reason {
		case refusedUnbound:
			if now.Sub(rc.lastBind) >= bindRetry {
				p.counters.relayRebinding.Add(1)
				p.bind(rc, now)
			}
		case refusedUnknown:
			if e := p.tables.Load().byTag[f.tag]; e != nil {
				if s := findRelay(e.relays, rc); s != nil {
					s.unknown = now
					p.choose(e, now)
				}
			}
		}
	}
}

// RelayBinding is this node's binding at a member relay.
type RelayBinding struct {
	Relay    RelayServer
	Bound    bool
	Observed netip.AddrPort // this node's address as the relay sees it
}

// LocalPaths is how other nodes can reach this one: what membership
// advertises (phase 2 of docs/nat.md).
type LocalPaths struct {
	Relays []RelayBinding
	// TURN is this node's relayed address on the TURN server; zero until
	// allocated.
	TURN netip.AddrPort
	// PublicKey is this node's key, the tag relays know it by.
	PublicKey identity.WGPublicKey
}

// Local reports this node's relay bindings and TURN allocation.
func (p *Paths) Local() LocalPaths {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := LocalPaths{PublicKey: p.pub}
	for _, rc := range p.relays {
		l.Relays = append(l.Relays, RelayBinding{Relay: rc.srv, Bound: rc.bound, Observed: rc.observed})
	}
	if p.turn != nil {
		l.TURN = p.turn.relayed()
	}
	return l
}
