package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent6/agent6/identity"
)

// knownPeers remembers, in the state directory, the peers this node was
// admitted with: their WireGuard keys and endpoints. A restarted node
// says HELLO to them at once and push/pulls with the first that answers,
// instead of waiting for them to ask it back (their reconnect timer:
// seconds, for a seed that had no join token of its own). The file holds
// no authority: every peer in it is verified again by HELLO and ACK.
type knownPeers struct {
	path  string      // empty: nothing is remembered
	dirty atomic.Bool // the admitted set changed since the last save
	mu    sync.Mutex  // serialises writes
}

// knownFile is known-peers.json.
type knownFile struct {
	V     int         `json:"v"`
	Peers []knownPeer `json:"peers"`
}

type knownPeer struct {
	Key       identity.WGPublicKey `json:"wg_key"`
	Endpoints []netip.AddrPort     `json:"endpoints"`
	Seen      time.Time            `json:"seen"`
}

const (
	knownVersion = 1
	// maxKnown bounds the peers remembered, and maxGreet those greeted at
	// start (the most recently admitted: any one that answers is enough).
	maxKnown     = 1024
	maxGreet     = 64
	maxKnownFile = 1 << 20
)

func knownPeersPath(dir string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, "known-peers.json")
}

// load reads the file; a missing one is empty, a bad one is logged and
// ignored (it is rewritten at the next save).
func (k *knownPeers) load(log *slog.Logger) []knownPeer {
	if k.path == "" {
		return nil
	}
	b, err := os.ReadFile(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil && len(b) > maxKnownFile {
		err = fmt.Errorf("%d bytes, more than %d", len(b), maxKnownFile)
	}
	var f knownFile
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err == nil && f.V != knownVersion {
		err = fmt.Errorf("version %d, want %d", f.V, knownVersion)
	}
	if err != nil {
		log.Warn("known peers not read; starting without them", "path", k.path, "err", err)
		return nil
	}
	out := f.Peers[:min(len(f.Peers), maxKnown)]
	for i := range out {
		out[i].Endpoints = out[i].Endpoints[:min(len(out[i].Endpoints), maxEndpoints)]
	}
	return out
}

// save writes peers atomically (a temporary file renamed), mode 0600.
func (k *knownPeers) save(peers []knownPeer, log *slog.Logger) {
	if k.path == "" {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := json.MarshalIndent(knownFile{V: knownVersion, Peers: peers}, "", "  ")
	if err == nil {
		err = os.MkdirAll(filepath.Dir(k.path), 0o700)
	}
	if err == nil {
		tmp := k.path + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, k.path)
		}
	}
	if err != nil {
		log.Warn("known peers not saved", "path", k.path, "err", err)
	}
}

// knownSnapshot lists the admitted peers, most recently admitted first.
func (m *Membership) knownSnapshot() []knownPeer {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]knownPeer, 0, len(m.ids.agents))
	for _, p := range m.ids.agents {
		if !p.admitted() {
			continue
		}
		eps := p.targets()
		out = append(out, knownPeer{Key: p.rec.wgKey, Endpoints: eps[:min(len(eps), maxEndpoints)], Seen: p.admittedAt.UTC()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seen.After(out[j].Seen) })
	return out[:min(len(out), maxKnown)]
}

// saveKnown saves the admitted peers if they changed since the last save.
func (m *Membership) saveKnown() {
	if m.known.path != "" && m.known.dirty.Swap(false) {
		m.known.save(m.knownSnapshot(), m.log)
	}
}

// greetKnown starts asking the remembered peers back (see knownPeers).
func (m *Membership) greetKnown() {
	peers := m.known.load(m.log)
	if len(peers) == 0 {
		return
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Seen.After(peers[j].Seen) })
	peers = peers[:min(len(peers), maxGreet)]
	m.log.Info("asking known peers back", "peers", len(peers), "path", m.known.path)
	m.wg.Go(func() { m.rejoinKnown(peers) })
}

// greetFor is how long a restarted node asks its known peers back.
const greetFor = 30 * time.Second

// rejoinKnown says HELLO to the known peers every helloEvery, and once one
// of them is admitted push/pulls with it: memberlist rejoins through it.
func (m *Membership) rejoinKnown(peers []knownPeer) {
	ctx, cancel := context.WithTimeout(context.Background(), greetFor)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last time.Time
	for {
		if now := time.Now(); now.Sub(last) >= helloEvery {
			last = now
			for _, kp := range peers {
				for _, ep := range kp.Endpoints {
					m.sendHello(ep)
				}
			}
		}
		for _, kp := range peers {
			a := kp.Key.Addr()
			m.mu.Lock()
			p := m.ids.agents[a]
			up := p != nil && p.admitted()
			m.mu.Unlock()
			if up {
				if err := m.pushPullHedged(ctx, a); err != nil {
					m.log.Debug("rejoin through a known peer failed", "addr", a, "err", err)
					continue
				}
				m.log.Info("rejoined through a known peer", "addr", a)
				return
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		case <-m.done:
			return
		}
	}
}
