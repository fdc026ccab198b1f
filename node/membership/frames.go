package membership

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/agent6/agent6/identity"
)

// Every Agent6 frame starts magic(1)=0xa6 | version(1)=2 | type(1). Two
// families share the layout:
//
//   - Admission frames (HELLO, ACK, REFUSED) travel on the node's UDP
//     socket, outside WireGuard, from senders not yet admitted.
//   - Peer frames (DELEGATE, DACK, END, LEAVE) travel inside WireGuard to
//     the task port of an admitted peer.
//
// HELLO, ACK and every peer frame carry, after the header, a SignedRecord
// signed by the sender's agent key: type RecordHello or RecordControl,
// whose payload repeats the frame type and binds a timestamp (and, for
// admission, nonces), so that no frame can be replayed, reflected to
// another node or turned into a frame of another type. Version 1 frames
// (unsigned) are refused.
const (
	ctrlMagic   = 0xa6
	ctrlVersion = 2
)

// Frame types.
const (
	ctrlHello    = 1 // "here is my record; send me yours"
	ctrlAck      = 2 // "here is mine", answering one HELLO
	ctrlRefused  = 7 // "your credential is revoked": a CA-signed revocation, verifiable by its subject
	frameDel     = 3 // a delegation chain, root first
	frameDAck    = 4 // "I hold the delegation of this task"
	frameEnd     = 5 // "this task ended"
	frameLeave   = 6 // "I am leaving the cluster"
	maxFrameType = 7
)

// frameWindow is how far a signed frame's timestamp may be from this
// node's clock. Nodes' clocks must agree within it (credentials already
// need roughly synchronised clocks); a frame outside it is refused, and
// inside it each sender's timestamps must increase, so a frame is never
// accepted twice.
const frameWindow = 2 * time.Minute

// A nonce names one HELLO: its ACK must echo it.
type nonce [16]byte

func newNonce() nonce {
	var n nonce
	rand.Read(n[:])
	return n
}

// helloHeader is the fixed part of an admission payload:
// type(1) | nonce(16) | echo(16) | unix nanoseconds(8), then the AgentRecord.
const helloHeader = 1 + 16 + 16 + 8

// hello is a decoded admission frame (HELLO or ACK). Nothing in it is
// authenticated until verify succeeds.
type hello struct {
	typ    byte
	nonce  nonce // the sender's: an ACK to this HELLO echoes it
	echo   nonce // in an ACK, the nonce of the HELLO it answers; zero in a HELLO
	ts     int64 // unix nanoseconds, the sender's clock
	record []byte
	sr     identity.SignedRecord
}

// sealHello makes a HELLO or ACK frame carrying record (an AgentRecord
// signed by k), signed by k.
func sealHello(k identity.PrivateKey, typ byte, n, echo nonce, ts int64, record []byte) ([]byte, error) {
	p := make([]byte, 0, helloHeader+len(record))
	p = append(p, typ)
	p = append(p, n[:]...)
	p = append(p, echo[:]...)
	p = binary.BigEndian.AppendUint64(p, uint64(ts))
	p = append(p, record...)
	sr, err := identity.SignRecord(k, identity.RecordHello, p)
	if err != nil {
		return nil, err
	}
	return append([]byte{ctrlMagic, ctrlVersion, typ}, sr.Marshal()...), nil
}

// errFrame marks a frame that does not decode.
var errFrame = errors.New("malformed frame")

// frameHeader checks the 3-byte header of b and returns its type.
func frameHeader(b []byte) (byte, error) {
	switch {
	case len(b) < 3 || b[0] != ctrlMagic:
		return 0, fmt.Errorf("%w: no Agent6 header", errFrame)
	case b[1] != ctrlVersion:
		return 0, fmt.Errorf("%w: version %d, want %d", errFrame, b[1], ctrlVersion)
	case b[2] == 0 || b[2] > maxFrameType:
		return 0, fmt.Errorf("%w: type %d", errFrame, b[2])
	}
	return b[2], nil
}

// openHello decodes a HELLO or ACK frame without verifying it: cheap
// checks only, so that a refusal costs no signature check.
func openHello(b []byte) (*hello, error) {
	typ, err := frameHeader(b)
	if err != nil {
		return nil, err
	}
	if typ != ctrlHello && typ != ctrlAck {
		return nil, fmt.Errorf("%w: type %d is not an admission frame", errFrame, typ)
	}
	sr, err := identity.DecodeSignedRecord(b[3:])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errFrame, err)
	}
	p := sr.Payload
	if sr.Type != identity.RecordHello || len(p) < helloHeader || p[0] != typ {
		return nil, fmt.Errorf("%w: admission payload", errFrame)
	}
	h := &hello{typ: typ, nonce: nonce(p[1:17]), echo: nonce(p[17:33]), ts: int64(binary.BigEndian.Uint64(p[33:41])), record: p[helloHeader:], sr: sr}
	if (typ == ctrlHello) != (h.echo == nonce{}) {
		return nil, fmt.Errorf("%w: a HELLO echoes nothing, an ACK echoes a nonce", errFrame)
	}
	// The record inside must be the sender's own: its signer field is the
	// frame's signer (checked again, with the signature, by parseRecord).
	if len(h.record) < 34 || [32]byte(h.record[2:34]) != [32]byte(sr.Signer.Bytes()) {
		return nil, fmt.Errorf("%w: the record is not the sender's", errFrame)
	}
	return h, nil
}

// verify checks the frame's signature: the sender's key vouches for the
// nonces, the time and the record's bytes.
func (h *hello) verify() error { return h.sr.Verify() }

// fresh reports, as an error, why a timestamp ts is not acceptable from a
// sender whose last accepted one was last (0 if none): outside
// frameWindow of now, or not after last.
func fresh(ts, last int64, now time.Time) error {
	d := time.Duration(now.UnixNano() - ts)
	switch {
	case d > frameWindow || d < -frameWindow:
		return fmt.Errorf("timestamp %s is %v from this node's clock (window %v)", time.Unix(0, ts).UTC().Format(time.RFC3339Nano), d.Round(time.Millisecond), frameWindow)
	case ts <= last:
		return fmt.Errorf("timestamp %s is not after the last accepted (%s): a replay", time.Unix(0, ts).UTC().Format(time.RFC3339Nano), time.Unix(0, last).UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// Peer frames: magic | version | type | SignedRecord(RecordControl,
// payload = type(1) | receiver address(16) | unix nanoseconds(8) | body).
// The receiver address makes a frame for one peer useless at another.
const peerHeader = 1 + 16 + 8

// peerFrame is a decoded peer frame; unauthenticated until verify.
type peerFrame struct {
	typ  byte
	to   netip.Addr
	ts   int64
	body []byte
	sr   identity.SignedRecord
}

// sealPeer makes a peer frame of type typ from k to the agent at to.
func sealPeer(k identity.PrivateKey, typ byte, to netip.Addr, ts int64, body []byte) ([]byte, error) {
	p := make([]byte, 0, peerHeader+len(body))
	p = append(p, typ)
	a := to.As16()
	p = append(p, a[:]...)
	p = binary.BigEndian.AppendUint64(p, uint64(ts))
	p = append(p, body...)
	sr, err := identity.SignRecord(k, identity.RecordControl, p)
	if err != nil {
		return nil, err
	}
	return append([]byte{ctrlMagic, ctrlVersion, typ}, sr.Marshal()...), nil
}

// openPeer decodes a peer frame without verifying it.
func openPeer(b []byte) (*peerFrame, error) {
	typ, err := frameHeader(b)
	if err != nil {
		return nil, err
	}
	if typ < frameDel || typ > frameLeave {
		return nil, fmt.Errorf("%w: type %d is not a peer frame", errFrame, typ)
	}
	sr, err := identity.DecodeSignedRecord(b[3:])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errFrame, err)
	}
	p := sr.Payload
	if sr.Type != identity.RecordControl || len(p) < peerHeader || p[0] != typ {
		return nil, fmt.Errorf("%w: peer frame payload", errFrame)
	}
	f := &peerFrame{typ: typ, to: netip.AddrFrom16([16]byte(p[1:17])), ts: int64(binary.BigEndian.Uint64(p[17:25])), body: p[peerHeader:], sr: sr}
	switch typ {
	case frameDAck, frameEnd:
		if len(f.body) != 16 {
			return nil, fmt.Errorf("%w: a task frame carries one address", errFrame)
		}
	case frameLeave:
		if len(f.body) != 0 {
			return nil, fmt.Errorf("%w: LEAVE carries nothing", errFrame)
		}
	}
	return f, nil
}

func (f *peerFrame) verify() error { return f.sr.Verify() }

// taskAddr is the address a DACK or END names.
func (f *peerFrame) taskAddr() netip.Addr { return netip.AddrFrom16([16]byte(f.body)) }

// encodeLinks frames delegation links (root first) as a DELEGATE body:
// n(1) then n × (len(2) | Link).
func encodeLinks(chain [][]byte) []byte {
	out := []byte{byte(len(chain))}
	for _, l := range chain {
		out = binary.BigEndian.AppendUint16(out, uint16(len(l)))
		out = append(out, l...)
	}
	return out
}

// HelloFrame returns a HELLO control frame carrying record, the signed
// AgentRecord of k (SignAgentRecord), signed by k at now, as a node sends
// it on its UDP socket to a node it wants to be admitted by. Nodes make
// their own; it is exported for tools and tests that speak the protocol.
func HelloFrame(k identity.PrivateKey, record []byte, now time.Time) ([]byte, error) {
	return sealHello(k, ctrlHello, newNonce(), nonce{}, now.UnixNano(), record)
}

// AckFrame is HelloFrame's answer: an ACK echoing the HELLO frame hello.
// It is exported for tests that speak the protocol.
func AckFrame(k identity.PrivateKey, record, hello []byte, now time.Time) ([]byte, error) {
	h, err := openHello(hello)
	if err != nil {
		return nil, err
	}
	return sealHello(k, ctrlAck, newNonce(), h.nonce, now.UnixNano(), record)
}

// PeerFrame returns a peer frame of the given kind ("delegate", "dack",
// "end" or "leave") from k to the agent at to, as a node sends it to a
// peer's task port. body is the frame's body (a DELEGATE's links from
// DelegateBody, a task address for DACK and END, nothing for LEAVE). It
// is exported for tests that speak the protocol.
func PeerFrame(k identity.PrivateKey, kind string, to netip.Addr, now time.Time, body []byte) ([]byte, error) {
	typ := map[string]byte{"delegate": frameDel, "dack": frameDAck, "end": frameEnd, "leave": frameLeave}[kind]
	if typ == 0 {
		return nil, fmt.Errorf("membership: unknown peer frame kind %q", kind)
	}
	return sealPeer(k, typ, to, now.UnixNano(), body)
}

// DelegateBody frames a delegation chain (identity.Link encodings, root
// first) as the body of a DELEGATE peer frame.
func DelegateBody(links [][]byte) []byte { return encodeLinks(links) }
