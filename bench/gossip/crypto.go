package gossip

import (
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"time"

	"golang.org/x/crypto/curve25519"
)

// CryptoCost is what the cryptography every agent6 join must do costs on
// this machine, one operation on one core, measured with the calls the
// code makes: X25519 through x/crypto's curve25519, which wireguard-go
// uses for every Diffie-Hellman (DH) and to make each handshake's
// ephemeral key (KeyGen), and crypto/ed25519 (Verify), which checks
// credentials and records.
type CryptoCost struct {
	DH, KeyGen, Verify time.Duration
}

// MeasureCrypto times each operation: the median of five batches of 200.
// Call it on an idle machine.
func MeasureCrypto() CryptoCost {
	var sk, pk, out [32]byte
	rand.Read(sk[:])
	curve25519.ScalarBaseMult(&pk, &sk)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 400) // about an AgentRecord
	sig := ed25519.Sign(priv, msg)
	return CryptoCost{
		DH:     perOp(func() { curve25519.ScalarMult(&out, &sk, &pk) }),
		KeyGen: perOp(func() { curve25519.ScalarBaseMult(&out, &sk) }),
		Verify: perOp(func() {
			if !ed25519.Verify(pub, msg, sig) {
				panic("gossip: ed25519 self-check failed")
			}
		}),
	}
}

func perOp(op func()) time.Duration {
	const batch = 200
	var each []time.Duration
	for range 5 {
		t0 := time.Now()
		for range batch {
			op()
		}
		each = append(each, time.Since(t0)/batch)
	}
	slices.Sort(each)
	return each[len(each)/2]
}

// Admissions is the least CPU time admitting every pair of n nodes takes:
// each node, for each other, checks two signatures (credential and
// record, or a meta that vouches for the record) and wireguard-go
// precomputes their static DH when the peer is added.
func (c CryptoCost) Admissions(n int) time.Duration {
	return time.Duration(n*(n-1)) * (c.DH + 2*c.Verify)
}

// Handshakes is the CPU time of k WireGuard handshakes: the initiator
// makes an ephemeral key and does one DH, the responder does one to read
// the initiation, makes its ephemeral key and does two more, and the
// initiator two to read the response (the static-static DH is
// precomputed).
func (c CryptoCost) Handshakes(k int) time.Duration {
	return time.Duration(k) * (6*c.DH + 2*c.KeyGen)
}
