package membership

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/agent6/agent6/identity"
)

// Token is a join token: the WireGuard key of a node already in the
// cluster and a UDP endpoint where it listens. Its text form is
//
//	agent6://<wg-public-key>@<host>:<port>
//
// The scheme is the format's version (1); a "?v=1" suffix is accepted, and
// any other version refused.
type Token struct {
	Key      identity.WGPublicKey
	Endpoint netip.AddrPort
}

const tokenScheme = "agent6://"

// ParseToken parses a join token.
func ParseToken(s string) (Token, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), tokenScheme)
	if !ok {
		return Token{}, fmt.Errorf("%w: %q does not start with %s", ErrBadToken, s, tokenScheme)
	}
	if body, query, ok := strings.Cut(rest, "?"); ok {
		if query != "v=1" {
			return Token{}, fmt.Errorf("%w: unsupported token version %q", ErrBadToken, query)
		}
		rest = body
	}
	// Base64 keys hold '/' and '+', so split at the last '@'.
	i := strings.LastIndexByte(rest, '@')
	if i < 0 {
		return Token{}, fmt.Errorf("%w: no '@' between key and endpoint", ErrBadToken)
	}
	key, err := identity.ParseWGPublicKey(rest[:i])
	if err != nil {
		return Token{}, fmt.Errorf("%w: key: %v", ErrBadToken, err)
	}
	ep, err := netip.ParseAddrPort(rest[i+1:])
	if err != nil {
		return Token{}, fmt.Errorf("%w: endpoint %q is not IP:port or [IPv6]:port", ErrBadToken, rest[i+1:])
	}
	if ep.Port() == 0 || ep.Addr().IsUnspecified() || ep.Addr().IsMulticast() {
		return Token{}, fmt.Errorf("%w: endpoint %s is not usable", ErrBadToken, ep)
	}
	return Token{Key: key, Endpoint: netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())}, nil
}

// String returns the token's text form.
func (t Token) String() string { return tokenScheme + t.Key.String() + "@" + t.Endpoint.String() }
