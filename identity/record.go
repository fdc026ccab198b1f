package identity

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// RecordType says what a signed record carries. Values are part of the
// wire format: never renumber.
type RecordType uint8

const (
	RecordAgent      RecordType = 1 // node.AgentRecord
	RecordRevocation RecordType = 2 // Revocation
	RecordDelegation RecordType = 3
	RecordPolicy     RecordType = 4
	RecordCheckpoint RecordType = 5
	RecordMeta       RecordType = 6 // the compact membership meta
	RecordAcceptance RecordType = 7 // a child's acceptance of a delegation
	RecordHello      RecordType = 8 // a fresh admission frame (HELLO, ACK)
	RecordControl    RecordType = 9 // a signed control frame between admitted peers (LEAVE, END, ...)
)

func (t RecordType) String() string {
	switch t {
	case RecordAgent:
		return "agent"
	case RecordRevocation:
		return "revocation"
	case RecordDelegation:
		return "delegation"
	case RecordPolicy:
		return "policy"
	case RecordCheckpoint:
		return "checkpoint"
	case RecordMeta:
		return "meta"
	case RecordAcceptance:
		return "acceptance"
	case RecordHello:
		return "hello"
	case RecordControl:
		return "control"
	}
	return fmt.Sprintf("record-type-%d", uint8(t))
}

// RecordVersion is the envelope format version.
const RecordVersion = 1

// recordOverhead is version, type, signer key, payload length, signature.
const recordOverhead = 1 + 1 + 32 + 2 + 64

// MaxRecordPayload bounds a record's payload.
const MaxRecordPayload = 1<<16 - 1

// ErrBadRecord reports a record that does not parse or verify.
var ErrBadRecord = errors.New("identity: bad signed record")

// SignedRecord is the envelope of every record Agent6 gossips: a typed
// payload signed by an Ed25519 key. Its encoding is
//
//	version(1)=1 | type(1) | signer(32) | len(2, big endian) | payload | signature(64)
//
// and the signature covers "agent6 record v1\x00" | type | signer | payload,
// so a signature for one type never verifies as another.
type SignedRecord struct {
	Type      RecordType
	Signer    PublicKey
	Payload   []byte
	Signature []byte
}

var recordContext = []byte("agent6 record v1\x00")

func signedBytes(t RecordType, signer PublicKey, payload []byte) []byte {
	b := make([]byte, 0, len(recordContext)+1+32+len(payload))
	b = append(b, recordContext...)
	b = append(b, byte(t))
	b = append(b, signer.k[:]...)
	return append(b, payload...)
}

// SignRecord signs payload as a record of type t with k.
func SignRecord(k PrivateKey, t RecordType, payload []byte) (SignedRecord, error) {
	if len(payload) > MaxRecordPayload {
		return SignedRecord{}, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrBadRecord, len(payload), MaxRecordPayload)
	}
	pub := k.Public()
	return SignedRecord{Type: t, Signer: pub, Payload: payload, Signature: k.Sign(signedBytes(t, pub, payload))}, nil
}

// Verify checks the signature against the record's own signer key. Who
// the signer must be is the caller's question.
func (r SignedRecord) Verify() error {
	if len(r.Signature) != 64 || !r.Signer.Verify(signedBytes(r.Type, r.Signer, r.Payload), r.Signature) {
		return fmt.Errorf("%w: %s record signature does not verify", ErrBadRecord, r.Type)
	}
	return nil
}

// Marshal encodes the record.
func (r SignedRecord) Marshal() []byte {
	b := make([]byte, 0, recordOverhead+len(r.Payload))
	b = append(b, RecordVersion, byte(r.Type))
	b = append(b, r.Signer.k[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Payload)))
	b = append(b, r.Payload...)
	return append(b, r.Signature...)
}

// ParseSignedRecord decodes a record and verifies its signature. The
// payload aliases b.
func ParseSignedRecord(b []byte) (SignedRecord, error) {
	r, err := DecodeSignedRecord(b)
	if err != nil {
		return SignedRecord{}, err
	}
	if err := r.Verify(); err != nil {
		return SignedRecord{}, err
	}
	return r, nil
}

// DecodeSignedRecord decodes a record without verifying its signature:
// nothing in it is authenticated until Verify succeeds. It is for a caller
// that already holds a verified commitment to exactly these bytes (a
// verified record of the same signer carrying their digest) and so need
// not pay for a second signature check. The payload aliases b.
func DecodeSignedRecord(b []byte) (SignedRecord, error) {
	if len(b) < recordOverhead {
		return SignedRecord{}, fmt.Errorf("%w: %d bytes is too short", ErrBadRecord, len(b))
	}
	if b[0] != RecordVersion {
		return SignedRecord{}, fmt.Errorf("%w: version %d, want %d", ErrBadRecord, b[0], RecordVersion)
	}
	var r SignedRecord
	r.Type = RecordType(b[1])
	signer, err := PublicKeyFromBytes(b[2:34])
	if err != nil {
		return SignedRecord{}, fmt.Errorf("%w: signer: %v", ErrBadRecord, err)
	}
	r.Signer = signer
	n := int(binary.BigEndian.Uint16(b[34:36]))
	if len(b) != recordOverhead+n {
		return SignedRecord{}, fmt.Errorf("%w: length %d does not match payload length %d", ErrBadRecord, len(b), n)
	}
	r.Payload = b[36 : 36+n]
	r.Signature = b[36+n:]
	return r, nil
}
