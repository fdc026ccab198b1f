package overlay

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/crypto/curve25519"

	"github.com/agent6/agent6/identity"
)

// PathMagic is the first byte of an overlay path frame on the node's UDP
// socket: the path probes between peers and the member-relay protocol
// (docs/nat.md). WireGuard messages start with their type (1-4), STUN
// messages with two zero bits, Agent6 control frames with ControlMagic.
const PathMagic = 0xa7

// pathVersion is the version byte of every path frame; a frame of another
// version is refused.
const pathVersion = 1

// Path frame types, the third byte.
const (
	framePing    = 1 // peer → peer: are you there on this path?
	framePong    = 2 // peer → peer: the answer, with the address the ping came from
	frameBind    = 3 // client → relay: relay for me, here is my key
	frameBound   = 4 // relay → client: done, and this is your address as I see it
	frameSend    = 5 // client → relay: forward this datagram to the client with tag
	frameRecv    = 6 // relay → client: a datagram from the client with tag
	frameRefused = 7 // relay → client: a send was refused, and why
)

// Field sizes.
const (
	pathHeader = 3  // magic, version, type
	tagSize    = 8  // a client's tag at a relay: the first bytes of its key
	macSize    = 16 // HMAC-SHA256, truncated
	txidSize   = 12
	addrSize   = 18 // IPv6 (IPv4 mapped) and port, big-endian
	keySize    = 32

	pingSize    = pathHeader + keySize + txidSize + macSize
	pongSize    = pathHeader + keySize + txidSize + addrSize + macSize
	bindSize    = pathHeader + keySize + 8 + macSize
	boundSize   = pathHeader + 8 + addrSize + macSize
	relayHeader = pathHeader + tagSize // send and recv
	refusedSize = pathHeader + 1 + tagSize
)

// Reasons a relay refuses a send.
const (
	refusedUnbound = 1 // the source address holds no binding: bind again
	refusedUnknown = 2 // no client with that tag is bound
)

// errFrame is returned for a path frame that does not parse.
var errFrame = errors.New("overlay: malformed path frame")

// pathFrame is a parsed path frame. Its slices point into the datagram.
type pathFrame struct {
	typ      byte
	key      identity.WGPublicKey // ping, pong: the sender; bind: the client
	txid     [txidSize]byte       // ping, pong
	observed netip.AddrPort       // pong, bound: the address the other side saw
	stamp    uint64               // bind, bound: the client's timestamp
	tag      [tagSize]byte        // send: destination; recv: source; refused: destination
	reason   byte                 // refused
	payload  []byte               // send, recv
	signed   []byte               // ping, pong, bind, bound: the bytes the MAC covers
	mac      []byte               // ping, pong, bind, bound
}

// parsePathFrame parses b, which starts with PathMagic. It checks sizes
// and the version only: MACs are the caller's, who knows the keys.
func parsePathFrame(b []byte) (pathFrame, error) {
	var f pathFrame
	if len(b) < pathHeader || b[0] != PathMagic || b[1] != pathVersion {
		return f, errFrame
	}
	f.typ = b[2]
	want := 0
	switch f.typ {
	case framePing:
		want = pingSize
	case framePong:
		want = pongSize
	case frameBind:
		want = bindSize
	case frameBound:
		want = boundSize
	case frameRefused:
		want = refusedSize
	case frameSend, frameRecv:
		if len(b) <= relayHeader {
			return f, errFrame
		}
		copy(f.tag[:], b[pathHeader:])
		f.payload = b[relayHeader:]
		return f, nil
	default:
		return f, errFrame
	}
	if len(b) != want {
		return f, errFrame
	}
	p := b[pathHeader:]
	switch f.typ {
	case framePing, framePong:
		f.key = identity.WGPublicKeyFromRaw([32]byte(p[:keySize]))
		copy(f.txid[:], p[keySize:])
		if f.typ == framePong {
			f.observed = getAddr(p[keySize+txidSize:])
		}
	case frameBind:
		f.key = identity.WGPublicKeyFromRaw([32]byte(p[:keySize]))
		f.stamp = binary.BigEndian.Uint64(p[keySize:])
	case frameBound:
		f.stamp = binary.BigEndian.Uint64(p)
		f.observed = getAddr(p[8:])
	case frameRefused:
		f.reason = p[0]
		copy(f.tag[:], p[1:])
		return f, nil
	}
	f.signed, f.mac = b[:len(b)-macSize], b[len(b)-macSize:]
	return f, nil
}

func pathHead(b []byte, typ byte) []byte { return append(b, PathMagic, pathVersion, typ) }

// appendPing appends a ping from sender with txid, MACed with key.
func appendPing(b []byte, key *[32]byte, sender identity.WGPublicKey, txid [txidSize]byte) []byte {
	start := len(b)
	raw := sender.Raw()
	b = append(append(pathHead(b, framePing), raw[:]...), txid[:]...)
	return appendMAC(b, key, b[start:])
}

// appendPong appends the answer to ping txid, from sender, which heard
// the ping from observed.
func appendPong(b []byte, key *[32]byte, sender identity.WGPublicKey, txid [txidSize]byte, observed netip.AddrPort) []byte {
	start := len(b)
	raw := sender.Raw()
	b = appendAddr(append(append(pathHead(b, framePong), raw[:]...), txid[:]...), observed)
	return appendMAC(b, key, b[start:])
}

// appendBind appends a relay binding request from client.
func appendBind(b []byte, key *[32]byte, client identity.WGPublicKey, stamp uint64) []byte {
	start := len(b)
	raw := client.Raw()
	b = binary.BigEndian.AppendUint64(append(pathHead(b, frameBind), raw[:]...), stamp)
	return appendMAC(b, key, b[start:])
}

// appendBound appends a relay's answer to the binding stamp.
func appendBound(b []byte, key *[32]byte, stamp uint64, observed netip.AddrPort) []byte {
	start := len(b)
	b = appendAddr(binary.BigEndian.AppendUint64(pathHead(b, frameBound), stamp), observed)
	return appendMAC(b, key, b[start:])
}

// appendRelayHeader appends the header of a send or recv frame.
func appendRelayHeader(b []byte, typ byte, tag [tagSize]byte) []byte {
	return append(pathHead(b, typ), tag[:]...)
}

func appendRefused(b []byte, reason byte, tag [tagSize]byte) []byte {
	return append(append(pathHead(b, frameRefused), reason), tag[:]...)
}

func appendAddr(b []byte, ap netip.AddrPort) []byte {
	a16 := ap.Addr().As16()
	if !ap.Addr().IsValid() {
		a16 = [16]byte{}
	}
	return binary.BigEndian.AppendUint16(append(b, a16[:]...), ap.Port())
}

func getAddr(b []byte) netip.AddrPort {
	a := netip.AddrFrom16([16]byte(b[:16])).Unmap()
	if a.IsUnspecified() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[16:]))
}

func appendMAC(b []byte, key *[32]byte, signed []byte) []byte {
	m := hmac.New(sha256.New, key[:])
	m.Write(signed)
	return append(b, m.Sum(nil)[:macSize]...)
}

// verify reports whether f's MAC is right under key.
func (f *pathFrame) verify(key *[32]byte) bool {
	m := hmac.New(sha256.New, key[:])
	m.Write(f.signed)
	return subtle.ConstantTimeCompare(m.Sum(nil)[:macSize], f.mac) == 1
}

// tagOf is a key's tag at a relay: its first eight bytes.
func tagOf(k identity.WGPublicKey) [tagSize]byte {
	raw := k.Raw()
	return [tagSize]byte(raw[:tagSize])
}

// MAC key labels: a pair's path probes and a client's relay binding use
// different keys even between the same two nodes.
const (
	labelPath  = "agent6 path probe v1"
	labelRelay = "agent6 relay bind v1"
)

// sharedKey derives a MAC key from the static X25519 keys of two nodes:
// HKDF-SHA256 of their Diffie-Hellman result, with label as info. Both
// sides compute the same key; nobody else can. It fails for a peer key of
// low order.
func sharedKey(priv identity.WGPrivateKey, pub identity.WGPublicKey, label string) ([32]byte, error) {
	raw, praw := priv.Raw(), pub.Raw()
	dh, err := curve25519.X25519(raw[:], praw[:])
	if err != nil {
		return [32]byte{}, errors.New("overlay: peer key of low order")
	}
	k, err := hkdf.Key(sha256.New, dh, nil, label, 32)
	if err != nil {
		return [32]byte{}, err
	}
	return [32]byte(k), nil
}
