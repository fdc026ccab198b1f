package overlay

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"sync"

	"golang.org/x/crypto/curve25519"

	"github.com/agent6/agent6/identity"
)

// Ordered proof of transit. Each waypoint W_j stamps its slot with
//
//	stamp_j = AES-CMAC(K(W_j, D), version | j | k | proto | src | dst | sport | dport | seq | stamp_{j-1})
//
// a 64-byte message (four AES blocks): the inner flow, the source's
// per-packet sequence number and the previous hop's stamp (zeros for the
// first), under a key that W_j shares with the destination D alone:
//
//	K(W, D) = HKDF-SHA256(X25519(W, D), salt = none,
//	                      info = "agent6 transit proof v1" 0x00 | W's public key | D's public key), 16 bytes
//
// from their static WireGuard keys, so that no exchange is needed and
// nobody else, the source and the other waypoints included, can make W's
// stamp. D recomputes the chain: every stamp must verify with the key of
// the waypoint the segment list names at that position, so a missing,
// reordered or forged hop fails, and a sequence number already accepted
// for the flow is refused as a replay.

const potKeyLabel = "agent6 transit proof v1\x00"

// errPotKey reports a peer key whose X25519 product with ours is zero (a
// low-order point): no key can be derived with it.
var errPotKey = errors.New("overlay: transit proof: unusable peer key")

// potKey is one waypoint–destination key, ready for CMAC. Safe for
// concurrent use: AES's key schedule is read-only.
type potKey struct {
	block  cipher.Block
	k1, k2 [16]byte // CMAC subkeys (RFC 4493 §2.3)
}

func newPotKey(key []byte) *potKey {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("overlay: aes: " + err.Error()) // 16 bytes is always a valid AES key
	}
	k := &potKey{block: b}
	var l [16]byte
	b.Encrypt(l[:], l[:])
	k.k1 = cmacDouble(l)
	k.k2 = cmacDouble(k.k1)
	return k
}

// cmacDouble multiplies by x in GF(2^128), as RFC 4493 derives subkeys.
func cmacDouble(in [16]byte) [16]byte {
	var out [16]byte
	carry := in[0] >> 7
	for i := range 15 {
		out[i] = in[i]<<1 | in[i+1]>>7
	}
	out[15] = in[15]<<1 ^ (0x87 * carry)
	return out
}

// potScratch holds the buffers one MAC computation needs. The AES block
// interface makes any slice passed to it escape, so the scratch is pooled
// rather than on the stack: a stamp costs no allocation.
type potScratch struct {
	msg [64]byte
	x   [16]byte
}

var potScratchPool = sync.Pool{New: func() any { return new(potScratch) }}

// cmac computes AES-CMAC (RFC 4493) of msg into s.x.
func (k *potKey) cmac(s *potScratch, msg []byte) {
	s.x = [16]byte{}
	for len(msg) > 16 {
		subtle.XORBytes(s.x[:], s.x[:], msg[:16])
		k.block.Encrypt(s.x[:], s.x[:])
		msg = msg[16:]
	}
	var last [16]byte
	if len(msg) == 16 {
		subtle.XORBytes(last[:], msg, k.k1[:])
	} else {
		copy(last[:], msg)
		last[len(msg)] = 0x80
		subtle.XORBytes(last[:], last[:], k.k2[:])
	}
	subtle.XORBytes(s.x[:], s.x[:], last[:])
	k.block.Encrypt(s.x[:], s.x[:])
}

// stamp computes waypoint j's stamp for the packet v into out. prev is the
// previous hop's stamp (nil for the first waypoint).
func (k *potKey) stamp(s *potScratch, v *srv6View, j int, prev, out []byte) {
	m := s.msg[:]
	m[0] = potVersion
	m[1] = byte(j)
	m[2] = byte(v.waypoints())
	m[3] = v.info.proto
	copy(m[4:20], v.info.src[:])
	copy(m[20:36], v.info.dst[:])
	binary.BigEndian.PutUint16(m[36:], v.info.sport)
	binary.BigEndian.PutUint16(m[38:], v.info.dport)
	copy(m[40:48], v.pkt[v.seqOff:v.seqOff+8])
	if prev == nil {
		clear(m[48:64])
	} else {
		copy(m[48:64], prev)
	}
	k.cmac(s, m)
	copy(out, s.x[:])
}

// potRole says which end of a waypoint–destination key this node holds.
type potRole uint8

const (
	roleWaypoint potRole = iota
	roleDestination
)

type potKeyID struct {
	peer identity.WGPublicKey
	role potRole
}

// maxPotKeys bounds the key cache; beyond it the cache starts again (a
// key costs one X25519 to derive).
const maxPotKeys = 4096

// keyring derives and caches the transit-proof keys this node shares with
// its peers. The private key never leaves it.
type keyring struct {
	priv [32]byte // set once, before the filter carries packets
	pub  identity.WGPublicKey

	mu   sync.RWMutex // guards keys
	keys map[potKeyID]*potKey
}

func (r *keyring) set(priv identity.WGPrivateKey) {
	r.priv = priv.Raw()
	r.pub = priv.Public()
	r.keys = make(map[potKeyID]*potKey)
}

// key returns the key this node, in role, shares with peer: as waypoint
// with a destination, or as destination with a waypoint.
func (r *keyring) key(peer identity.WGPublicKey, role potRole) (*potKey, error) {
	id := potKeyID{peer, role}
	r.mu.RLock()
	k := r.keys[id]
	r.mu.RUnlock()
	if k != nil {
		return k, nil
	}
	if r.keys == nil {
		return nil, errPotKey
	}
	raw := peer.Raw()
	secret, err := curve25519.X25519(r.priv[:], raw[:])
	if err != nil {
		return nil, errPotKey
	}
	w, d := r.pub.Raw(), raw
	if role == roleDestination {
		w, d = raw, r.pub.Raw()
	}
	info := make([]byte, 0, len(potKeyLabel)+64)
	info = append(append(append(info, potKeyLabel...), w[:]...), d[:]...)
	km, err := hkdf.Key(sha256.New, secret, nil, string(info), 16)
	if err != nil {
		return nil, errPotKey
	}
	k = newPotKey(km)
	r.mu.Lock()
	if len(r.keys) >= maxPotKeys {
		clear(r.keys)
	}
	r.keys[id] = k
	r.mu.Unlock()
	return k, nil
}

// replayWindow refuses sequence numbers already accepted, and those too
// far behind the highest (RFC 6479's sliding window, 1024 wide). Safe for
// concurrent use.
type replayWindow struct {
	mu   sync.Mutex
	top  uint64 // highest accepted; 0 before the first
	bits [replayWords]uint64
}

const (
	replayWords = 16
	replayBits  = replayWords * 64
)

// accept reports whether seq is new, and records it.
func (w *replayWindow) accept(seq uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.top == 0 && w.bits == [replayWords]uint64{} {
		w.top = seq
		w.bits[(seq/64)%replayWords] |= 1 << (seq % 64)
		return true
	}
	if seq > w.top {
		// Clear the words the window slides past.
		from, to := w.top/64+1, seq/64
		if to-from >= replayWords {
			w.bits = [replayWords]uint64{}
		} else {
			for i := from; i <= to; i++ {
				w.bits[i%replayWords] = 0
			}
		}
		w.top = seq
	} else if w.top-seq >= replayBits-64 {
		return false // too old to tell
	}
	word, bit := (seq/64)%replayWords, uint64(1)<<(seq%64)
	if w.bits[word]&bit != 0 {
		return false
	}
	w.bits[word] |= bit
	return true
}
