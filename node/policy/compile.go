package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// compiledPolicy is one policy of a document, ready to evaluate.
type compiledPolicy struct {
	id       string
	cedarID  types.PolicyID
	p        *cedar.Policy
	forbid   bool
	line     int
	column   int
	ob       Obligations
	actions  [numActions]bool // which actions its scope admits
	cedarTxt string           // the policy as cedar-go prints it
}

// compiled is a document's policy set with its index.
type compiled struct {
	policies []compiledPolicy
	byID     map[types.PolicyID]int
	idx      *index
}

// Position is a place in a document's Cedar text.
type Position struct {
	Line, Column int
}

func (p Position) String() string { return fmt.Sprintf("%d:%d", p.Line, p.Column) }

// validator is the schema validator; building it once costs a few hundred
// microseconds and it is safe for concurrent use (Policy only reads).
var validator = sync.OnceValue(func() *validate.Validator {
	var s schema.Schema
	if err := s.UnmarshalCedar([]byte(schemaText)); err != nil {
		panic("policy: built-in schema: " + err.Error())
	}
	r, err := s.Resolve()
	if err != nil {
		panic("policy: built-in schema: " + err.Error())
	}
	return validate.New(r)
})

// chunk is the text of one policy: everything up to and including its ';'.
type chunk struct {
	text   string
	line   int // where text starts, 1-based
	column int
}

// splitPolicies cuts Cedar text after each ';' outside string literals and
// comments, so that each policy parses on its own and a syntax error can
// be pinned to one policy. A trailing chunk of only blanks and comments is
// dropped; a trailing chunk with anything else is kept (and fails to
// parse, naming its place).
func splitPolicies(src string) []chunk {
	var out []chunk
	start, line, col := 0, 1, 1
	startLine, startCol := 1, 1
	content := false // the current chunk has a token
	inString, escaped, inComment := false, false, false
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case inComment:
			if c == '\n' {
				inComment = false
			}
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '/':
			inComment = true
		case c == '"':
			inString, content = true, true
		case c == ';':
			out = append(out, chunk{text: src[start : i+1], line: startLine, column: startCol})
			start, content = i+1, false
			startLine, startCol = line, col+1
		case c != ' ' && c != '\t' && c != '\n' && c != '\r':
			content = true
		}
		if c == '\n' {
			line, col = line+1, 1
			if start == i+1 {
				startLine, startCol = line, col
			}
		} else if c < 0x80 || c >= 0xc0 { // count runes, not UTF-8 continuation bytes
			col++
		}
	}
	if content {
		out = append(out, chunk{text: src[start:], line: startLine, column: startCol})
	}
	return out
}

// position maps a line and column inside a chunk to the whole text.
func (c chunk) position(line, col int) Position {
	if line <= 1 {
		return Position{c.line, c.column + col - 1}
	}
	return Position{c.line + line - 1, col}
}

var (
	errPosition = regexp.MustCompile(`<input>:(\d+):(\d+)`)
	idAnnot     = regexp.MustCompile(`@id\s*\(\s*"((?:[^"\\]|\\.)*)"`)
	// Agent and Task literals as cedar-go prints a policy.
	addrLiteral = regexp.MustCompile(`\b(Agent|Task)::"((?:[^"\\]|\\.)*)"`)
)

// compile parses, validates and indexes Cedar text. Errors are *Error
// with the policy and position filled in; doc names the document.
func compile(src, doc string) (*compiled, error) {
	chunks := splitPolicies(src)
	if len(chunks) > MaxPolicies {
		return nil, &Error{Reason: ErrTooLarge, Doc: doc, Msg: fmt.Sprintf("%d policies, more than %d", len(chunks), MaxPolicies)}
	}
	c := &compiled{policies: make([]compiledPolicy, 0, len(chunks)), byID: make(map[types.PolicyID]int, len(chunks))}
	v := validator()
	for i, ch := range chunks {
		fallbackID := "policy" + strconv.Itoa(i)
		var p cedar.Policy
		if err := p.UnmarshalCedar([]byte(ch.text)); err != nil {
			id := fallbackID
			if m := idAnnot.FindStringSubmatch(ch.text); m != nil {
				id = m[1]
			}
			e := &Error{Reason: ErrSyntax, Doc: doc, Policy: id, Msg: cleanParseError(err.Error())}
			if m := errPosition.FindStringSubmatch(err.Error()); m != nil {
				l, _ := strconv.Atoi(m[1])
				col, _ := strconv.Atoi(m[2])
				l, col = blameToken(ch.text, err.Error(), l, col)
				pos := ch.position(l, col)
				e.Line, e.Column = pos.Line, pos.Column
			} else {
				e.Line, e.Column = ch.line, ch.column
			}
			return nil, e
		}
		ppos := p.Position()
		pos := ch.position(ppos.Line, ppos.Column)
		ann := make(map[string]string)
		for k, val := range p.Annotations() {
			ann[string(k)] = string(val)
		}
		id := fallbackID
		if s, ok := ann["id"]; ok {
			id = s
		}
		fail := func(reason error, format string, a ...any) error {
			return &Error{Reason: reason, Doc: doc, Policy: id, Line: pos.Line, Column: pos.Column, Msg: fmt.Sprintf(format, a...)}
		}
		if _, ok := ann["id"]; ok && !validPolicyID(id) {
			return nil, fail(ErrAnnotation, "@id %q: want 1 to 128 printable characters", id)
		}
		if _, dup := c.byID[types.PolicyID(id)]; dup {
			return nil, fail(ErrAnnotation, "policy id %q is used twice", id)
		}
		forbid := p.Effect() == cedar.Forbid
		ob, err := parseObligations(ann, forbid)
		if err != nil {
			return nil, fail(ErrAnnotation, "%v", err)
		}
		if err := v.Policy("", (*xast.Policy)(p.AST())); err != nil {
			return nil, fail(ErrSchema, "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
		txt := string(p.MarshalCedar())
		for _, m := range addrLiteral.FindAllStringSubmatch(txt, -1) {
			if a, err := netip.ParseAddr(m[2]); err != nil || a.String() != m[2] || !a.Is6() {
				return nil, fail(ErrSchema, "%s::%q: an %s is named by its overlay address, as `agent6 addr` prints it", m[1], m[2], m[1])
			}
		}
		cp := compiledPolicy{
			id:       id,
			cedarID:  types.PolicyID(id),
			p:        &p,
			forbid:   forbid,
			line:     pos.Line,
			column:   pos.Column,
			ob:       ob,
			actions:  actionsOf(p.AST()),
			cedarTxt: txt,
		}
		c.byID[cp.cedarID] = len(c.policies)
		c.policies = append(c.policies, cp)
	}
	c.idx = buildIndex(c.policies)
	return c, nil
}

var gotWant = regexp.MustCompile(`exact got (.+) want (.*)$`)

// blameToken moves the position of a cedar-go "exact got X want Y" error,
// which names the token after X (the parser has already moved past X), back
// to X itself, found as the last occurrence of its text before the
// reported place. Other errors keep their position.
func blameToken(text, msg string, line, col int) (int, int) {
	m := gotWant.FindStringSubmatch(msg)
	if m == nil || m[1] == "" {
		return line, col
	}
	// The byte offset of line:col (col counts runes).
	off, l, c := 0, 1, 1
	for off < len(text) && (l < line || (l == line && c < col)) {
		r, size := utf8.DecodeRuneInString(text[off:])
		if r == '\n' {
			l, c = l+1, 1
		} else {
			c++
		}
		off += size
	}
	i := strings.LastIndex(text[:off], m[1])
	if i < 0 {
		return line, col
	}
	l, c = 1, 1
	for _, r := range text[:i] {
		if r == '\n' {
			l, c = l+1, 1
		} else {
			c++
		}
	}
	return l, c
}

// cleanParseError drops cedar-go's "<input>:L:C" (the position is given
// separately, in the whole text) and its "parser error: " prefix, and
// says what an "exact got X want Y" error means.
func cleanParseError(s string) string {
	if m := gotWant.FindStringSubmatch(s); m != nil {
		return fmt.Sprintf("unexpected %q, want %q", m[1], m[2])
	}
	s = strings.TrimPrefix(s, "parser error: ")
	s = errPosition.ReplaceAllString(s, "")
	s = strings.Replace(s, "parse error at  ", "", 1)
	s = strings.Replace(s, "parse error at ", "", 1)
	return strings.TrimSpace(s)
}

func validPolicyID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if c < ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// PolicyInfo describes one policy of a document, for show and explain.
type PolicyInfo struct {
	ID          string      `json:"id"`
	Effect      string      `json:"effect"` // "permit" or "forbid"
	Position    Position    `json:"position"`
	Obligations Obligations `json:"obligations"`
	Text        string      `json:"text"` // as cedar-go prints it
}

func (cp *compiledPolicy) info() PolicyInfo {
	eff := "permit"
	if cp.forbid {
		eff = "forbid"
	}
	return PolicyInfo{ID: cp.id, Effect: eff, Position: Position{cp.line, cp.column}, Obligations: cp.ob, Text: cp.cedarTxt}
}
