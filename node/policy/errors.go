package policy

import (
	"errors"
	"fmt"
)

// Refusals of a policy document, one sentinel per reason so that callers
// can branch on them and count them (RefusalReason names each). A refused
// document changes nothing: the document in force stays in force.
var (
	// ErrMalformed: the record or its payload does not decode: wrong
	// record type, unknown format version, bad compression, JSON that is
	// not the canonical encoding, a header that disagrees with the body.
	ErrMalformed = errors.New("policy: malformed document")
	// ErrTooLarge: the document exceeds MaxDocumentSize, MaxPolicies,
	// MaxTests or MaxFixtures.
	ErrTooLarge = errors.New("policy: document too large")
	// ErrBadSignature: the record's signature does not verify.
	ErrBadSignature = errors.New("policy: bad signature")
	// ErrUnknownDomain: the document's trust domain is not in the bundle.
	ErrUnknownDomain = errors.New("policy: trust domain not in the bundle")
	// ErrUntrusted: the signer is not a CA of the document's trust domain.
	ErrUntrusted = errors.New("policy: signer is not a CA of the trust domain")
	// ErrReplay: the serial is not above the serial of the document in
	// force for the trust domain (the highest valid serial wins).
	ErrReplay = errors.New("policy: serial not newer than the document in force")
	// ErrSyntax: the Cedar text does not parse.
	ErrSyntax = errors.New("policy: syntax error")
	// ErrSchema: a policy does not validate against Agent6's Cedar schema
	// (an unknown entity type, attribute or action, a type error), or
	// names an Agent or Task by something other than an overlay address.
	ErrSchema = errors.New("policy: schema error")
	// ErrAnnotation: an unknown annotation, a malformed obligation, an
	// obligation on a forbid, a repeated policy id.
	ErrAnnotation = errors.New("policy: bad annotation")
	// ErrTests: the tests section does not parse or names what it does not
	// define.
	ErrTests = errors.New("policy: bad tests")
	// ErrTestsFailed: a test's expectation does not hold.
	ErrTestsFailed = errors.New("policy: tests failed")
)

var refusalReasons = [...]struct {
	err  error
	name string
}{
	{ErrMalformed, "malformed"},
	{ErrTooLarge, "too_large"},
	{ErrBadSignature, "bad_signature"},
	{ErrUnknownDomain, "unknown_domain"},
	{ErrUntrusted, "untrusted_signer"},
	{ErrReplay, "replay"},
	{ErrSyntax, "syntax"},
	{ErrSchema, "schema"},
	{ErrAnnotation, "annotation"},
	{ErrTests, "bad_tests"},
	{ErrTestsFailed, "tests_failed"},
}

// RefusalReasons lists every name RefusalReason returns, for counters.
func RefusalReasons() []string {
	out := make([]string, 0, len(refusalReasons)+1)
	for _, r := range refusalReasons {
		out = append(out, r.name)
	}
	return append(out, "other")
}

// RefusalReason names the reason err refused a document, for counters:
// malformed, too_large, bad_signature, unknown_domain, untrusted_signer,
// replay, syntax, schema, annotation, bad_tests, tests_failed; "other" for
// an error that wraps none of the sentinels.
func RefusalReason(err error) string {
	return RefusalReasons()[refusalIndex(err)]
}

// refusalIndex returns the index of err's reason in RefusalReasons.
func refusalIndex(err error) int {
	for i, r := range refusalReasons {
		if errors.Is(err, r.err) {
			return i
		}
	}
	return len(refusalReasons)
}

// Error is a refusal that names where it arose: the document, and for a
// problem inside the Cedar text, the policy and its line and column. It
// wraps one of the sentinel errors.
type Error struct {
	Reason error  // one of the sentinels above
	Doc    string // names the document: "example.org serial 7 (deploy.cedar)"
	Policy string // the policy id, "" when the problem is not in one policy
	Line   int    // 1-based, in the document's Cedar text; 0 if unknown
	Column int
	Msg    string
}

func (e *Error) Error() string {
	s := e.Reason.Error()
	if e.Doc != "" {
		s += ": document " + e.Doc
	}
	if e.Policy != "" {
		s += fmt.Sprintf(": policy %q", e.Policy)
	}
	if e.Line > 0 {
		s += fmt.Sprintf(" at %d:%d", e.Line, e.Column)
	}
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

func (e *Error) Unwrap() error { return e.Reason }
