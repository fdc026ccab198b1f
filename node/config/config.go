// Package config reads the sidecar's YAML configuration file. Every error
// names the file and the field; unknown keys are errors, so a typo never
// silently means a default.
//
//	key: /etc/agent6/agent.key        # PKCS#8 Ed25519 private key (required)
//	listen_port: 51820                # UDP
//	tun: agent6                       # interface name
//	mtu: 1420
//	localapi: /run/agent6/agent6.sock # unix socket
//	localapi_group: agent6            # group of the socket: its members may use the LocalAPI
//	localapi_admin_group: agent6-admin # members may also revoke (as root may)
//	state_dir: /var/lib/agent6        # what the node keeps across restarts
//	log_level: info                   # debug, info, warn, error
//	peers:                            # static peers
//	  - public_key: "base64 WireGuard public key"
//	    endpoint: "192.0.2.1:51820"
//	    persistent_keepalive: 25      # seconds, optional
//	credential: /etc/agent6/agent.crt # X.509 from `agent6 ca issue`
//	trust_bundle: /etc/agent6/bundle.pem # CA certificates of trusted domains
//	join:                             # tokens from `agent6 invite`
//	  - agent6://<key>@192.0.2.1:51820
//	endpoints: ["192.0.2.7:51820"]    # advertised UDP endpoints (default: interface addresses)
//	gossip_port: 7946
//	max_tasks_per_peer: 256           # tasks of one peer this node accepts
//	card: /etc/agent6/card.json       # A2A-shaped agent card, for discovery
//	disable_dns: false                # true: no DNS server on the overlay address
//
// With credential and trust_bundle the node runs membership: it gossips
// inside the overlay and admits every agent whose credential verifies.
// A peer's address is always derived from its key, never configured.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/card"
	"github.com/agent6/agent6/node/membership"
)

// Defaults for keys the file leaves out.
const (
	DefaultKey        = "/etc/agent6/agent.key"
	DefaultListenPort = 51820
	DefaultTUN        = "agent6"
	DefaultLocalAPI   = "/run/agent6/agent6.sock"
	DefaultStateDir   = "/var/lib/agent6"
)

// Config is a loaded, validated configuration.
type Config struct {
	Path       string // the file it came from
	KeyFile    string // absolute or relative to the working directory
	Key        identity.PrivateKey
	ListenPort uint16
	TUN        string
	MTU        int
	LocalAPI   string
	// LocalAPIGID is the group given the socket (localapi_group), and
	// AdminGID the group whose members may make the LocalAPI's admin
	// writes (localapi_admin_group); -1 when unset.
	LocalAPIGID int
	AdminGID    int
	StateDir    string // the node's state directory (node.Node.Dir)
	LogLevel    slog.Level
	Peers       []node.Peer

	CredentialFile  string
	Credential      []byte // DER
	TrustBundleFile string
	Bundle          *identity.Bundle
	Join            []string // validated tokens
	Endpoints       []netip.AddrPort
	GossipPort      uint16
	MaxTasksPerPeer int // tasks of one peer this node accepts (0: the default, 256)
	CardFile        string
	Card            *card.Card
	DisableDNS      bool // no DNS server on port 53 of the overlay address
}

// Error is a configuration error: the file, the field (a path such as
// "peers[1].endpoint", empty for the file as a whole) and what is wrong.
type Error struct {
	File  string
	Field string
	Err   error
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("config %s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("config %s: %s: %v", e.File, e.Field, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// file mirrors the YAML document.
type file struct {
	Key           *string `yaml:"key"`
	ListenPort    *int    `yaml:"listen_port"`
	TUN           *string `yaml:"tun"`
	MTU           *int    `yaml:"mtu"`
	LocalAPI      *string `yaml:"localapi"`
	LocalAPIGroup *string `yaml:"localapi_group"`
	AdminGroup    *string `yaml:"localapi_admin_group"`
	StateDir      *string `yaml:"state_dir"`
	LogLevel      *string `yaml:"log_level"`
	Peers         []peer  `yaml:"peers"`

	Credential  *string  `yaml:"credential"`
	TrustBundle *string  `yaml:"trust_bundle"`
	Join        []string `yaml:"join"`
	Endpoints   []string `yaml:"endpoints"`
	GossipPort  *int     `yaml:"gossip_port"`
	MaxTasks    *int     `yaml:"max_tasks_per_peer"`
	Card        *string  `yaml:"card"`
	DisableDNS  bool     `yaml:"disable_dns"`
}

type peer struct {
	PublicKey           string `yaml:"public_key"`
	Endpoint            string `yaml:"endpoint"`
	PersistentKeepalive int    `yaml:"persistent_keepalive"`
}

var (
	// topKeys are the keys a configuration file may hold, in the order
	// the documentation gives them.
	topKeys  = []string{"key", "listen_port", "tun", "mtu", "localapi", "localapi_group", "localapi_admin_group", "state_dir", "log_level", "peers", "credential", "trust_bundle", "join", "endpoints", "gossip_port", "max_tasks_per_peer", "card", "disable_dns"}
	peerKeys = []string{"public_key", "endpoint", "persistent_keepalive"}
)

// maxFileSize bounds what Load reads.
const maxFileSize = 1 << 20

// Load reads and validates the configuration at path, including the key
// file it names (relative paths are relative to the config file).
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	if len(data) > maxFileSize {
		return nil, &Error{File: path, Err: fmt.Errorf("larger than %d bytes", maxFileSize)}
	}
	return Parse(path, data)
}

// Parse validates data as the configuration file named path.
func Parse(path string, data []byte) (*Config, error) {
	fail := func(field string, format string, args ...any) error {
		return &Error{File: path, Field: field, Err: fmt.Errorf(format, args...)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{File: path, Err: err}
	}
	if err := checkKeys(&doc, path); err != nil {
		return nil, err
	}
	var raw file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return nil, &Error{File: path, Err: err}
	}

	c := &Config{Path: path, KeyFile: DefaultKey, ListenPort: DefaultListenPort, TUN: DefaultTUN, MTU: node.DefaultMTU, LocalAPI: DefaultLocalAPI,
		LocalAPIGID: -1, AdminGID: -1, StateDir: DefaultStateDir, LogLevel: slog.LevelInfo, DisableDNS: raw.DisableDNS}
	if raw.Key != nil {
		if *raw.Key == "" {
			return nil, fail("key", "empty path")
		}
		c.KeyFile = *raw.Key
		if !filepath.IsAbs(c.KeyFile) {
			c.KeyFile = filepath.Join(filepath.Dir(path), c.KeyFile)
		}
	}
	if raw.ListenPort != nil {
		if *raw.ListenPort < 0 || *raw.ListenPort > 65535 {
			return nil, fail("listen_port", "%d is not a UDP port (0-65535)", *raw.ListenPort)
		}
		c.ListenPort = uint16(*raw.ListenPort)
	}
	if raw.TUN != nil {
		if *raw.TUN == "" || len(*raw.TUN) > 15 || strings.ContainsAny(*raw.TUN, "/ \t\n%:") {
			return nil, fail("tun", "%q is not a valid interface name (1-15 characters, no '/', ':', '%%' or spaces)", *raw.TUN)
		}
		c.TUN = *raw.TUN
	}
	if raw.MTU != nil {
		if *raw.MTU < 1280 || *raw.MTU > 65535 {
			return nil, fail("mtu", "%d out of range (1280-65535; IPv6 needs at least 1280)", *raw.MTU)
		}
		c.MTU = *raw.MTU
	}
	if raw.LocalAPI != nil {
		if *raw.LocalAPI == "" {
			return nil, fail("localapi", "empty path")
		}
		c.LocalAPI = *raw.LocalAPI
	}
	for _, g := range []struct {
		field string
		raw   *string
		gid   *int
	}{{"localapi_group", raw.LocalAPIGroup, &c.LocalAPIGID}, {"localapi_admin_group", raw.AdminGroup, &c.AdminGID}} {
		if g.raw == nil {
			continue
		}
		gid, err := lookupGroup(*g.raw)
		if err != nil {
			return nil, fail(g.field, "%v", err)
		}
		*g.gid = gid
	}
	if raw.StateDir != nil {
		if *raw.StateDir == "" {
			return nil, fail("state_dir", "empty path")
		}
		c.StateDir = *raw.StateDir
		if !filepath.IsAbs(c.StateDir) {
			c.StateDir = filepath.Join(filepath.Dir(path), c.StateDir)
		}
	}
	if raw.LogLevel != nil {
		if err := c.LogLevel.UnmarshalText([]byte(*raw.LogLevel)); err != nil {
			return nil, fail("log_level", "%q is not one of debug, info, warn, error", *raw.LogLevel)
		}
	}
	seen := make(map[identity.WGPublicKey]int)
	for i, p := range raw.Peers {
		field := fmt.Sprintf("peers[%d]", i)
		if p.PublicKey == "" {
			return nil, fail(field+".public_key", "missing")
		}
		pub, err := identity.ParseWGPublicKey(p.PublicKey)
		if err != nil {
			return nil, fail(field+".public_key", "%v", err)
		}
		if j, dup := seen[pub]; dup {
			return nil, fail(field+".public_key", "same key as peers[%d]", j)
		}
		seen[pub] = i
		np := node.Peer{PublicKey: pub}
		if p.Endpoint != "" {
			ap, err := netip.ParseAddrPort(p.Endpoint)
			if err != nil {
				return nil, fail(field+".endpoint", "%q is not IP:port or [IPv6]:port", p.Endpoint)
			}
			if ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
				return nil, fail(field+".endpoint", "%s is not a usable peer address", ap)
			}
			np.Endpoint = ap
		}
		if p.PersistentKeepalive < 0 || p.PersistentKeepalive > 65535 {
			return nil, fail(field+".persistent_keepalive", "%d out of range (0-65535 seconds)", p.PersistentKeepalive)
		}
		np.PersistentKeepalive = time.Duration(p.PersistentKeepalive) * time.Second
		c.Peers = append(c.Peers, np)
	}
	for i, ep := range raw.Endpoints {
		ap, err := netip.ParseAddrPort(ep)
		if err != nil || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
			return nil, fail(fmt.Sprintf("endpoints[%d]", i), "%q is not a usable IP:port", ep)
		}
		c.Endpoints = append(c.Endpoints, ap)
	}
	if raw.GossipPort != nil {
		if *raw.GossipPort < 1 || *raw.GossipPort > 65535 {
			return nil, fail("gossip_port", "%d is not a port (1-65535)", *raw.GossipPort)
		}
		c.GossipPort = uint16(*raw.GossipPort)
	}
	if raw.MaxTasks != nil {
		if *raw.MaxTasks < 1 || *raw.MaxTasks > 1<<16 {
			return nil, fail("max_tasks_per_peer", "%d out of range (1-65536)", *raw.MaxTasks)
		}
		c.MaxTasksPerPeer = *raw.MaxTasks
	}
	for i, tok := range raw.Join {
		if _, err := membership.ParseToken(tok); err != nil {
			return nil, fail(fmt.Sprintf("join[%d]", i), "%v", err)
		}
		c.Join = append(c.Join, tok)
	}
	key, err := identity.LoadPrivateKey(c.KeyFile)
	if err != nil {
		return nil, fail("key", "%v", err)
	}
	c.Key = key
	if err := c.loadCredential(path, raw.Credential, raw.TrustBundle, fail); err != nil {
		return nil, err
	}
	if raw.Card != nil {
		if c.Credential == nil {
			return nil, fail("card", "needs credential and trust_bundle (cards travel with membership)")
		}
		c.CardFile = *raw.Card
		if !filepath.IsAbs(c.CardFile) {
			c.CardFile = filepath.Join(filepath.Dir(path), c.CardFile)
		}
		if c.Card, err = card.Load(c.CardFile); err != nil {
			return nil, fail("card", "%v", err)
		}
	}
	self := key.WireGuard().Public()
	if i, ok := seen[self]; ok {
		return nil, fail(fmt.Sprintf("peers[%d].public_key", i), "is this node's own key")
	}
	return c, nil
}

// loadCredential reads the credential and trust bundle and checks that the
// credential verifies and belongs to the key, so that a mistake shows at
// start, naming the field.
func (c *Config) loadCredential(path string, cred, bundle *string, fail func(string, string, ...any) error) error {
	rel := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(path), p)
	}
	switch {
	case cred == nil && bundle == nil:
		if len(c.Join) > 0 {
			return fail("join", "needs credential and trust_bundle")
		}
		return nil
	case cred == nil:
		return fail("credential", "missing (trust_bundle is set; membership needs both)")
	case bundle == nil:
		return fail("trust_bundle", "missing (credential is set; membership needs both)")
	}
	c.CredentialFile, c.TrustBundleFile = rel(*cred), rel(*bundle)
	der, err := identity.LoadCertificate(c.CredentialFile)
	if err != nil {
		return fail("credential", "%v", err)
	}
	b, err := identity.LoadBundle(c.TrustBundleFile)
	if err != nil {
		return fail("trust_bundle", "%v", err)
	}
	vc, err := b.Verify(der, time.Now())
	if err != nil {
		return fail("credential", "%s does not verify against trust_bundle %s: %v", c.CredentialFile, c.TrustBundleFile, err)
	}
	if !vc.AgentKey.Equal(c.Key.Public()) {
		return fail("credential", "%s certifies another agent key, not the one in %s", c.CredentialFile, c.KeyFile)
	}
	c.Credential, c.Bundle = der, b
	return nil
}

// checkKeys refuses keys the format does not define, naming them and
// their line, before decoding.
func checkKeys(doc *yaml.Node, path string) error {
	if doc.Kind == 0 { // empty file
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return &Error{File: path, Err: errors.New("not a YAML mapping of keys to values")}
	}
	top := doc.Content[0]
	if err := checkMapping(top, "", topKeys, path); err != nil {
		return err
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "peers" {
			continue
		}
		peers := top.Content[i+1]
		if peers.Kind != yaml.SequenceNode {
			if peers.Tag == "!!null" {
				continue
			}
			return &Error{File: path, Field: "peers", Err: fmt.Errorf("line %d: want a list of peers", peers.Line)}
		}
		for j, p := range peers.Content {
			field := fmt.Sprintf("peers[%d]", j)
			if p.Kind != yaml.MappingNode {
				return &Error{File: path, Field: field, Err: fmt.Errorf("line %d: want a mapping with public_key and endpoint", p.Line)}
			}
			if err := checkMapping(p, field+".", peerKeys, path); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkMapping(m *yaml.Node, prefix string, allowed []string, path string) error {
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := m.Content[i]
		ok := false
		for _, a := range allowed {
			ok = ok || k.Value == a
		}
		if !ok {
			return &Error{File: path, Field: prefix + k.Value, Err: fmt.Errorf("line %d: unknown key (known: %s)", k.Line, strings.Join(allowed, ", "))}
		}
	}
	return nil
}

// lookupGroup returns the ID of the group named s, or s itself if it is a
// number (a group need not have a name).
func lookupGroup(s string) (int, error) {
	if g, err := user.LookupGroup(s); err == nil {
		return strconv.Atoi(g.Gid)
	}
	if id, err := strconv.ParseUint(s, 10, 31); err == nil {
		return int(id), nil
	}
	return -1, fmt.Errorf("no group %q on this host (a group name or a numeric ID)", s)
}

// Node returns the sidecar node this configuration describes.
func (c *Config) Node(logger *slog.Logger) *node.Node {
	return &node.Node{
		Key:        c.Key,
		Dir:        c.StateDir,
		ListenPort: c.ListenPort,
		TUN:        c.TUN,
		MTU:        c.MTU,
		Peers:      c.Peers,
		Logger:     logger,
		Credential: c.Credential,
		Bundle:     c.Bundle,
		Join:       c.Join,
		Endpoints:  c.Endpoints,
		GossipPort: c.GossipPort,

		MaxTasksPerPeer: c.MaxTasksPerPeer,
		Card:            c.Card,
		DisableDNS:      c.DisableDNS,
	}
}
