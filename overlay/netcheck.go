package overlay

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/agent6/agent6/identity"
)

// NetcheckReport is what Netcheck found out about this node's network,
// as `agent6 netcheck` will show it.
type NetcheckReport struct {
	// UDP reports whether any STUN server answered: UDP leaves and
	// returns.
	UDP bool
	// Reflexive is this node's address as each STUN server that answered
	// saw it.
	Reflexive map[netip.AddrPort]netip.AddrPort
	// Errors holds, per STUN server that did not answer, why.
	Errors map[netip.AddrPort]string
	// MappingVariesByDest is true when two servers saw different
	// addresses: the NAT maps per destination (endpoint-dependent,
	// "symmetric"), and hole punching will not work from here. It is
	// meaningful only with two or more answers (Servers >= 2).
	MappingVariesByDest bool
	Servers             int // STUN servers that answered
	// RelayLatency is the round trip of a binding ping to each member
	// relay given, and of each peer reached through one; zero if none
	// answered.
	RelayLatency map[identity.WGPublicKey]time.Duration
}

// Netcheck asks each STUN server in servers for this node's reflexive
// address over the node's socket, at once, and compares the answers; with
// p, it measures each member relay's round trip too. It blocks until all
// have answered or ctx is done.
func Netcheck(ctx context.Context, b *Bind, p *Paths, servers []netip.AddrPort) NetcheckReport {
	rep := NetcheckReport{
		Reflexive:    make(map[netip.AddrPort]netip.AddrPort),
		Errors:       make(map[netip.AddrPort]string),
		RelayLatency: make(map[identity.WGPublicKey]time.Duration),
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			ap, err := b.STUN(ctx, s)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.Errors[s] = err.Error()
				return
			}
			rep.Reflexive[s] = ap
		})
	}
	if p != nil {
		for _, r := range p.relayList() {
			wg.Go(func() {
				rtt, err := p.relayRTT(ctx, r)
				if err == nil {
					mu.Lock()
					rep.RelayLatency[r.srv.PublicKey] = rtt
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	rep.Servers = len(rep.Reflexive)
	rep.UDP = rep.Servers > 0
	var first netip.AddrPort
	for _, ap := range rep.Reflexive {
		if !first.IsValid() {
			first = ap
		} else if ap != first {
			rep.MappingVariesByDest = true
		}
	}
	return rep
}

func (p *Paths) relayList() []*relayClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*relayClient(nil), p.relays...)
}

// relayRTT binds to rc afresh and times the answer.
func (p *Paths) relayRTT(ctx context.Context, rc *relayClient) (time.Duration, error) {
	p.mu.Lock()
	start := time.Now()
	p.bind(rc, start)
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		at := rc.boundAt
		p.mu.Unlock()
		if at.After(start) {
			return at.Sub(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
	}
}
