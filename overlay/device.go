package overlay

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/agent6/agent6/identity"
)

// Config configures a Device. Zero values are the documented defaults.
type Config struct {
	// PrivateKey is the node's WireGuard key. Required.
	PrivateKey identity.WGPrivateKey
	// ListenPort is the UDP port; 0 picks a free one (see Device.ListenPort).
	ListenPort uint16
	// Filter configures the packet filter. Its Local field is set from
	// PrivateKey; the rest default as FilterConfig documents.
	Filter FilterConfig
	// Bind is the UDP transport; nil means wireguard-go's default (one
	// socket per address family on ListenPort). With a *Bind, an
	// initiation that arrived before its peer was set is redelivered when
	// SetPeer adds the peer.
	Bind conn.Bind
	// Logger receives the device's log. Nil discards.
	Logger *slog.Logger
}

// PeerConfig is one WireGuard peer.
type PeerConfig struct {
	PublicKey identity.WGPublicKey
	// Endpoint is where to send; zero means wait for the peer to call.
	Endpoint netip.AddrPort
	// AllowedIPs are the inner source addresses the peer may use. Empty means
	// exactly the peer's derived /128, which is what Agent6 always wants.
	AllowedIPs []netip.Prefix
	// PersistentKeepalive, if non-zero, keeps NAT mappings open.
	PersistentKeepalive time.Duration
	// Managed hands the peer's endpoint to the Bind's Paths (a *Bind with
	// NewPaths on it): WireGuard's endpoint is then the peer itself, and
	// each datagram takes the path Paths chooses. Endpoint must be zero.
	Managed bool
}

// PeerStats is what the device reports of one peer.
type PeerStats struct {
	PublicKey        identity.WGPublicKey
	Addr             netip.Addr
	Endpoint         netip.AddrPort // zero until known
	LastHandshake    time.Time      // zero if never
	RxBytes, TxBytes uint64
	AllowedIPs       []netip.Prefix
}

// Device is a WireGuard device with the Agent6 filter in its packet path,
// configured through typed values. Safe for concurrent use.
type Device struct {
	wg     *device.Device
	bind   conn.Bind
	filter *Filter
	addr   netip.Addr
	log    *slog.Logger

	mu        sync.Mutex // serialises peer updates; guards allowed
	allowed   map[identity.WGPublicKey]map[netip.Prefix]bool
	closeOnce sync.Once
}

// NewDevice starts a WireGuard device on the TUN backend tunDev (kernel TUN
// or netstack), wrapped in the Agent6 filter. The device owns tunDev from
// then on, and Close closes it.
func NewDevice(tunDev tun.Device, cfg Config) (*Device, error) {
	var zero identity.WGPrivateKey
	if cfg.PrivateKey.Equal(zero) {
		tunDev.Close()
		return nil, errors.New("overlay: Config.PrivateKey is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pub := cfg.PrivateKey.Public()
	addr := pub.Addr()
	fcfg := cfg.Filter
	fcfg.Local = addr
	if fcfg.Logger == nil {
		fcfg.Logger = log
	}
	filter := NewFilter(tunDev, fcfg)
	filter.keys.set(cfg.PrivateKey) // before WireGuard can hand it a packet
	bind := cfg.Bind
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	if b, ok := bind.(*Bind); ok {
		b.hs.setLocalKey(pub.Raw())
	}
	wgLog := &device.Logger{
		Verbosef: func(format string, args ...any) {
			// wireguard-go reports cryptokey-routing refusals only in its
			// verbose log; count them as drops. The format strings are
			// pinned by TestSpoofedSourceRefused in package node.
			if strings.HasPrefix(format, "IPv6 packet with disallowed source address") ||
				strings.HasPrefix(format, "IPv4 packet with disallowed source address") {
				filter.countPeerSpoof(fmt.Sprint(args...))
				return
			}
			// An initiation wireguard-go refused will not be answered:
			// the Bind stops holding ours behind it.
			if b, ok := bind.(*Bind); ok && strings.HasPrefix(format, "Received invalid initiation message from") && len(args) == 1 {
				if ap, err := netip.ParseAddrPort(fmt.Sprint(args[0])); err == nil {
					b.hs.invalid(ap)
				}
			}
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug("wireguard: " + fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { log.Warn("wireguard: " + fmt.Sprintf(format, args...)) },
	}
	d := &Device{
		allowed: make(map[identity.WGPublicKey]map[netip.Prefix]bool),
		wg:      device.NewDevice(filter, bind, wgLog),
		bind:    bind,
		filter:  filter,
		addr:    addr,
		log:     log,
	}
	raw := cfg.PrivateKey.Raw()
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(raw[:]), cfg.ListenPort)
	if err := d.wg.IpcSet(uapi); err != nil {
		d.Close()
		return nil, fmt.Errorf("overlay: configure device: %w", err)
	}
	if err := d.wg.Up(); err != nil {
		d.Close()
		return nil, fmt.Errorf("overlay: bring device up (UDP port %d): %w", cfg.ListenPort, err)
	}
	return d, nil
}

// Addr returns the node's Agent6 address.
func (d *Device) Addr() netip.Addr { return d.addr }

// Filter returns the device's packet filter.
func (d *Device) Filter() *Filter { return d.filter }

// ListenPort returns the UDP port the device listens on.
func (d *Device) ListenPort() (uint16, error) {
	st, err := d.get()
	if err != nil {
		return 0, err
	}
	return st.listenPort, nil
}

// SetPeer adds the peer, or updates it if the key is already a peer. An
// existing peer's AllowedIPs are changed prefix by prefix (never cleared
// and refilled), so its traffic flows on while tasks come and go.
func (d *Device) SetPeer(p PeerConfig) error {
	if p.PublicKey.IsZero() {
		return errors.New("overlay: peer public key is required")
	}
	if p.PersistentKeepalive < 0 || p.PersistentKeepalive > 65535*time.Second {
		return fmt.Errorf("overlay: peer %s: persistent keepalive %v out of range", p.PublicKey.ShortString(), p.PersistentKeepalive)
	}
	allowed := p.AllowedIPs
	if len(allowed) == 0 {
		allowed = []netip.Prefix{netip.PrefixFrom(p.PublicKey.Addr(), 128)}
	}
	want := make(map[netip.Prefix]bool, len(allowed))
	for _, pfx := range allowed {
		if !pfx.IsValid() {
			return fmt.Errorf("overlay: peer %s: invalid allowed prefix", p.PublicKey.ShortString())
		}
		want[pfx.Masked()] = true
	}
	d.mu.Lock() // one peer update at a time: the diff below must not interleave
	defer d.mu.Unlock()
	have := d.allowed[p.PublicKey] // what this device last set: no UAPI dump per update
	raw := p.PublicKey.Raw()
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(raw[:]))
	switch {
	case p.Managed && p.Endpoint.IsValid():
		return fmt.Errorf("overlay: peer %s: a managed peer has no fixed endpoint", p.PublicKey.ShortString())
	case p.Managed:
		fmt.Fprintf(&b, "endpoint=%s\n", ManagedEndpoint(p.PublicKey))
	case p.Endpoint.IsValid():
		fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
	}
	fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
	if have == nil { // a new peer, or one whose prefixes are unknown
		b.WriteString("replace_allowed_ips=true\n")
	}
	for pfx := range want {
		if !have[pfx] {
			fmt.Fprintf(&b, "allowed_ip=%s\n", pfx)
		}
	}
	for pfx := range have {
		if !want[pfx] {
			fmt.Fprintf(&b, "allowed_ip=-%s\n", pfx)
		}
	}
	if err := d.wg.IpcSet(b.String()); err != nil {
		delete(d.allowed, p.PublicKey) // unknown now: the next update replaces them all
		return fmt.Errorf("overlay: set peer %s: %w", p.PublicKey.ShortString(), err)
	}
	d.allowed[p.PublicKey] = want
	addrs := make([]netip.Prefix, 0, len(want))
	for pfx := range want {
		addrs = append(addrs, pfx)
	}
	d.filter.setPeerAddrs(p.PublicKey, addrs)
	if b, ok := d.bind.(*Bind); ok && have == nil {
		switch {
		case p.Endpoint.IsValid():
			b.hs.redeliver(p.Endpoint, time.Now())
		case p.Managed:
			b.hs.redeliver(netip.AddrPortFrom(p.PublicKey.Addr(), 0), time.Now())
		}
	}
	d.log.Debug("peer set", "peer", p.PublicKey.ShortString(), "addr", p.PublicKey.Addr(), "endpoint", p.Endpoint, "allowed", len(want))
	return nil
}

// SetAllowedIP adds (allow) or removes one prefix to or from the
// AllowedIPs of an existing peer, leaving the others as they are: a task
// that starts or ends costs one UAPI line, whatever the peer's other
// tasks. It fails for a key that is not a peer.
func (d *Device) SetAllowedIP(pub identity.WGPublicKey, pfx netip.Prefix, allow bool) error {
	if !pfx.IsValid() {
		return fmt.Errorf("overlay: peer %s: invalid allowed prefix", pub.ShortString())
	}
	pfx = pfx.Masked()
	d.mu.Lock()
	defer d.mu.Unlock()
	have := d.allowed[pub]
	if have == nil {
		return fmt.Errorf("overlay: set allowed prefix %s: %s is not a peer", pfx, pub.ShortString())
	}
	if have[pfx] == allow {
		return nil
	}
	raw := pub.Raw()
	line := fmt.Sprintf("allowed_ip=%s\n", pfx)
	if !allow {
		line = fmt.Sprintf("allowed_ip=-%s\n", pfx)
	}
	if err := d.wg.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\n%s", hex.EncodeToString(raw[:]), line)); err != nil {
		delete(d.allowed, pub) // unknown now: the next SetPeer replaces them all
		return fmt.Errorf("overlay: set allowed prefix %s of %s: %w", pfx, pub.ShortString(), err)
	}
	if allow {
		have[pfx] = true
	} else {
		delete(have, pfx)
	}
	return nil
}

// RemovePeer removes the peer with key pub; removing an absent peer is not
// an error.
func (d *Device) RemovePeer(pub identity.WGPublicKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.allowed, pub)
	d.filter.setPeerAddrs(pub, nil)
	raw := pub.Raw()
	if err := d.wg.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", hex.EncodeToString(raw[:]))); err != nil {
		return fmt.Errorf("overlay: remove peer %s: %w", pub.ShortString(), err)
	}
	return nil
}

// Peers returns the state of every peer.
func (d *Device) Peers() ([]PeerStats, error) {
	st, err := d.get()
	if err != nil {
		return nil, err
	}
	return st.peers, nil
}

// Close shuts the device down and closes the TUN backend. It is idempotent
// and returns an error wrapping net.ErrClosed after the first call.
func (d *Device) Close() error {
	first := false
	d.closeOnce.Do(func() {
		first = true
		d.wg.Close() // closes the filter, which closes the backend
		d.filter.Close()
	})
	if !first {
		return fmt.Errorf("overlay: device: %w", net.ErrClosed)
	}
	return nil
}

type deviceState struct {
	listenPort uint16
	peers      []PeerStats
}

// get reads the device's state through the UAPI get operation; the text
// format stays inside this function.
func (d *Device) get() (deviceState, error) {
	var st deviceState
	text, err := d.wg.IpcGet()
	if err != nil {
		return st, fmt.Errorf("overlay: read device state: %w", err)
	}
	var cur *PeerStats
	var hsSec, hsNsec int64
	flush := func() {
		if cur == nil {
			return
		}
		if hsSec != 0 || hsNsec != 0 {
			cur.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		st.peers = append(st.peers, *cur)
		cur, hsSec, hsNsec = nil, 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "listen_port":
			n, _ := strconv.ParseUint(v, 10, 16)
			st.listenPort = uint16(n)
		case "public_key":
			flush()
			raw, err := hex.DecodeString(v)
			if err != nil || len(raw) != 32 {
				return st, fmt.Errorf("overlay: device reported bad public key %q", v)
			}
			pub := identity.WGPublicKeyFromRaw([32]byte(raw))
			cur = &PeerStats{PublicKey: pub, Addr: pub.Addr()}
		}
		if cur == nil {
			continue
		}
		switch k {
		case "endpoint":
			if ap, err := netip.ParseAddrPort(v); err == nil {
				cur.Endpoint = ap
			}
		case "last_handshake_time_sec":
			hsSec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			hsNsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			cur.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			cur.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "allowed_ip":
			if p, err := netip.ParsePrefix(v); err == nil {
				cur.AllowedIPs = append(cur.AllowedIPs, p)
			}
		}
	}
	flush()
	return st, nil
}
