// Package identity owns what an Agent6 agent is: its Ed25519 key, the X25519
// WireGuard key derived from it, and the IPv6 address derived from that
// WireGuard key.
//
// The derivations are frozen; every address in every deployment depends on
// them, and the golden vectors in the tests pin them:
//
//   - The agent key is an Ed25519 key, stored as a PKCS#8 PEM file.
//   - The WireGuard private key is clamp(SHA-512(seed)[:32]), as libsodium's
//     crypto_sign_ed25519_sk_to_curve25519; the WireGuard public key is the
//     Montgomery form of the Ed25519 public key.
//   - The address is an ORCHIDv2 (RFC 7343) in 2001:20::/28 with suite 1:
//     first4 = 20 01 00 21, then 12 bytes of
//     cSHAKE128(N="", S=ContextID, X=first4 || WireGuard public key).
//
// Organisation credentials are X.509 SVIDs (credential.go, ca.go,
// bundle.go): an Ed25519 CA per trust domain certifies each agent key with
// the URI SAN spiffe://<trust-domain>/agent/<name> and the derived address
// as IP SAN; a Bundle of CA certificates says which domains a node trusts;
// CA-signed revocations (revocation.go) travel as SignedRecords.
//
// The package is pure: no I/O beyond reading and writing key, certificate,
// bundle and revocation files.
package identity
