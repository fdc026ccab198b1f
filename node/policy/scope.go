package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agent6/agent6/identity"
)

// SelectorKind says what a selector matches on.
type SelectorKind uint8

const (
	SelectAny    SelectorKind = iota // "*": any agent or task
	SelectAddr                       // an overlay address: that agent (and its tasks) or that task
	SelectID                         // a SPIFFE ID: that agent and its tasks
	SelectGroup                      // "group:G": agents with group G, and their tasks
	SelectRole                       // "role:R"
	SelectSkill                      // "skill:S": agents whose card has skill S
	SelectTag                        // "tag:T": agents whose card has a skill tagged T
	SelectDomain                     // "domain:D": agents of trust domain D
)

// Selector names a set of agents (and their tasks), optionally narrowed to
// a protocol and port range. Its text form is
//
//	selector = target [ " " proto [ "/" port [ "-" port ] ] ]
//	target   = "*" | ADDRESS | SPIFFE-ID | "group:" NAME | "role:" NAME
//	         | "skill:" NAME | "tag:" NAME | "domain:" TRUST-DOMAIN
//	proto    = "tcp" | "udp" | "icmp"
//
// for example "group:tools tcp/443", "skill:web-search",
// "spiffe://partner.example/agent/quotes tcp/8000-8099" or
// "2001:21:4bc6:f39d:90d:70a2:9351:1c64 udp". A task's scope is a list of
// selectors; @via takes the targets role:, group: and SPIFFE ID only.
type Selector struct {
	Kind   SelectorKind
	Value  string     // the name, SPIFFE ID or trust domain; "" for SelectAny and SelectAddr
	Addr   netip.Addr // for SelectAddr
	Proto  Proto      // 0: any protocol
	PortLo uint16     // with PortHi: the destination ports, inclusive; 0-0 means any
	PortHi uint16
}

// Bounds on scopes and selectors.
const (
	MaxSelectorLen = 300 // one selector's text
	MaxSelectors   = 32  // in one scope (identity.Delegation allows 32) or one @via
)

var selectorPrefixes = []struct {
	prefix string
	kind   SelectorKind
}{
	{"group:", SelectGroup}, {"role:", SelectRole}, {"skill:", SelectSkill},
	{"tag:", SelectTag}, {"domain:", SelectDomain},
}

// ParseSelector parses one selector (see Selector).
func ParseSelector(s string) (Selector, error) {
	if len(s) > MaxSelectorLen {
		return Selector{}, fmt.Errorf("policy: selector of %d bytes, more than %d", len(s), MaxSelectorLen)
	}
	target, rest, hasProto := strings.Cut(strings.TrimSpace(s), " ")
	sel, err := parseTarget(target)
	if err != nil {
		return Selector{}, fmt.Errorf("policy: selector %q: %v", s, err)
	}
	if hasProto {
		if err := sel.parseProtoPorts(strings.TrimSpace(rest)); err != nil {
			return Selector{}, fmt.Errorf("policy: selector %q: %v", s, err)
		}
	}
	return sel, nil
}

func parseTarget(t string) (Selector, error) {
	switch {
	case t == "":
		return Selector{}, fmt.Errorf("empty")
	case t == "*":
		return Selector{Kind: SelectAny}, nil
	case strings.HasPrefix(t, "spiffe://"):
		id, err := spiffeid.FromString(t)
		if err != nil {
			return Selector{}, fmt.Errorf("SPIFFE ID: %v", err)
		}
		return Selector{Kind: SelectID, Value: id.String()}, nil
	}
	for _, p := range selectorPrefixes {
		name, ok := strings.CutPrefix(t, p.prefix)
		if !ok {
			continue
		}
		if p.kind == SelectDomain {
			td, err := spiffeid.TrustDomainFromString(name)
			if err != nil || strings.Contains(name, ":") {
				return Selector{}, fmt.Errorf("trust domain %q is not a bare trust domain name", name)
			}
			return Selector{Kind: p.kind, Value: td.Name()}, nil
		}
		if err := validName(name); err != nil {
			return Selector{}, err
		}
		return Selector{Kind: p.kind, Value: name}, nil
	}
	a, err := netip.ParseAddr(t)
	if err != nil || !a.Is6() || a.Zone() != "" || !identity.IsOverlay(a) {
		return Selector{}, fmt.Errorf("%q is not *, an overlay address, a SPIFFE ID or one of group:, role:, skill:, tag:, domain:", t)
	}
	return Selector{Kind: SelectAddr, Addr: a}, nil
}

// validName checks a group, role, skill or tag name: printable, no spaces
// or commas (which separate selectors), at most 64 bytes.
func validName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("name %q: want 1 to 64 bytes", name)
	}
	for _, c := range name {
		if c <= ' ' || c == ',' || c == 0x7f {
			return fmt.Errorf("name %q: no spaces, commas or control characters", name)
		}
	}
	return nil
}

func (sel *Selector) parseProtoPorts(s string) error {
	proto, ports, hasPorts := strings.Cut(s, "/")
	p, err := ParseProto(proto)
	if err != nil {
		return fmt.Errorf("protocol %q: want tcp, udp or icmp", proto)
	}
	sel.Proto = p
	if !hasPorts {
		return nil
	}
	if p == ProtoICMP {
		return fmt.Errorf("icmp has no ports")
	}
	lo, hi, isRange := strings.Cut(ports, "-")
	l, err := parsePort(lo)
	if err != nil {
		return err
	}
	h := l
	if isRange {
		if h, err = parsePort(hi); err != nil {
			return err
		}
	}
	if h < l {
		return fmt.Errorf("port range %d-%d is empty", l, h)
	}
	sel.PortLo, sel.PortHi = l, h
	return nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("port %q: want 1 to 65535", s)
	}
	return uint16(n), nil
}

// String returns the selector's canonical text form.
func (sel Selector) String() string {
	var b strings.Builder
	switch sel.Kind {
	case SelectAny:
		b.WriteString("*")
	case SelectAddr:
		b.WriteString(sel.Addr.String())
	case SelectID:
		b.WriteString(sel.Value)
	default:
		for _, p := range selectorPrefixes {
			if p.kind == sel.Kind {
				b.WriteString(p.prefix)
			}
		}
		b.WriteString(sel.Value)
	}
	if sel.Proto != 0 {
		b.WriteString(" " + sel.Proto.String())
		if sel.PortLo != 0 {
			b.WriteString("/" + strconv.Itoa(int(sel.PortLo)))
			if sel.PortHi != sel.PortLo {
				b.WriteString("-" + strconv.Itoa(int(sel.PortHi)))
			}
		}
	}
	return b.String()
}

// MarshalText returns the selector's text form.
func (sel Selector) MarshalText() ([]byte, error) { return []byte(sel.String()), nil }

// UnmarshalText parses a selector (ParseSelector).
func (sel *Selector) UnmarshalText(b []byte) error {
	s, err := ParseSelector(string(b))
	if err != nil {
		return err
	}
	*sel = s
	return nil
}

// MatchesAgent reports whether the selector's target names the party
// (its protocol and ports aside): an agent, or a task by its own address
// or through its agent. Groups and roles are read as in documents: from
// trust domain view, an agent of view is in group:G, an agent of another
// domain td in group:td/G (see Agent.entity). A task's scope is read from
// its own agent's domain, a @via from its document's.
func (sel *Selector) MatchesAgent(p *Party, view string) bool {
	a := &p.Agent
	switch sel.Kind {
	case SelectAny:
		return true
	case SelectAddr:
		return sel.Addr == a.Addr || (p.IsTask() && sel.Addr == p.Tasks[0].Addr)
	case SelectID:
		return a.ID != "" && sel.Value == a.ID
	case SelectGroup:
		return hasLabel(a.Groups, sel.Value, a.TrustDomain, view)
	case SelectRole:
		return hasLabel(a.Roles, sel.Value, a.TrustDomain, view)
	case SelectSkill:
		return slices.Contains(a.Skills, sel.Value)
	case SelectTag:
		return slices.Contains(a.Tags, sel.Value)
	case SelectDomain:
		return a.TrustDomain != "" && sel.Value == a.TrustDomain
	}
	return false
}

// hasLabel reports whether labels, given by the CA of trust domain td,
// hold name as seen from view: name itself when td is view, else td/name.
func hasLabel(labels []string, name, td, view string) bool {
	if td != view {
		rest, ok := strings.CutPrefix(name, td+"/")
		if !ok {
			return false
		}
		name = rest
	}
	return slices.Contains(labels, name)
}

// matches reports whether the selector admits action on resource over
// proto to port, from trust domain view. Protocol and ports narrow connect
// only: a task may discover (and read the audit records of) whatever it
// may connect to.
func (sel *Selector) matches(res *Party, view string, action Action, proto Proto, port uint16) bool {
	if !sel.MatchesAgent(res, view) {
		return false
	}
	if action != ActionConnect || sel.Proto == 0 {
		return true
	}
	if sel.Proto != proto {
		return false
	}
	return sel.PortLo == 0 || (sel.PortLo <= port && port <= sel.PortHi)
}

// Scope is what a task may reach: a list of selectors, any of which admits
// a destination. The zero Scope limits nothing. A task's scope is signed
// in its delegation (identity.Delegation.Scope); a sub-agent is bound by
// its own scope and by every ancestor's.
type Scope struct {
	sels []Selector
}

// ParseScope parses a delegation's scope, one selector per string. A
// delegation whose scope does not parse must be refused: reading it as
// "no limit" would widen what its signer granted.
func ParseScope(ss []string) (Scope, error) {
	if len(ss) > MaxSelectors {
		return Scope{}, fmt.Errorf("policy: scope of %d selectors, more than %d", len(ss), MaxSelectors)
	}
	var s Scope
	for _, x := range ss {
		sel, err := ParseSelector(x)
		if err != nil {
			return Scope{}, err
		}
		s.sels = append(s.sels, sel)
	}
	return s, nil
}

// MustParseScope is ParseScope for literals in programs and tests; it
// panics on an error.
func MustParseScope(ss ...string) Scope {
	s, err := ParseScope(ss)
	if err != nil {
		panic(err)
	}
	return s
}

// IsZero reports whether s limits nothing.
func (s Scope) IsZero() bool { return len(s.sels) == 0 }

// Selectors returns the scope's selectors.
func (s Scope) Selectors() []Selector { return slices.Clone(s.sels) }

// Strings returns the scope in its text form, one selector per string.
func (s Scope) Strings() []string {
	out := make([]string, len(s.sels))
	for i, sel := range s.sels {
		out[i] = sel.String()
	}
	return out
}

// MarshalJSON writes the scope in its text form, a list of selectors.
func (s Scope) MarshalJSON() ([]byte, error) { return json.Marshal(s.Strings()) }

// UnmarshalJSON reads a list of selectors (ParseScope).
func (s *Scope) UnmarshalJSON(b []byte) error {
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return err
	}
	scope, err := ParseScope(ss)
	if err != nil {
		return err
	}
	*s = scope
	return nil
}

// Allows reports whether the scope, read from trust domain view (the
// domain of the task's agent), admits action on res over proto to port.
func (s Scope) Allows(res *Party, view string, action Action, proto Proto, port uint16) bool {
	if len(s.sels) == 0 {
		return true
	}
	for i := range s.sels {
		if s.sels[i].matches(res, view, action, proto, port) {
			return true
		}
	}
	return false
}

// scopeAllows checks r against the scope of the principal's task and of
// each ancestor the request carries. It returns the address of the first
// task whose scope refuses, if any.
func scopeAllows(r *Request) (netip.Addr, bool) {
	for i := range r.Principal.Tasks {
		t := &r.Principal.Tasks[i]
		if !t.Scope.Allows(&r.Resource, r.Principal.Agent.TrustDomain, r.Action, r.Proto, r.Port) {
			return t.Addr, false
		}
	}
	return netip.Addr{}, true
}

// ParseVia parses the value of a @via annotation: an ordered,
// comma-separated list of waypoint selectors, each role:NAME, group:NAME
// or a SPIFFE ID, one hop each.
func ParseVia(s string) ([]Selector, error) {
	parts := strings.Split(s, ",")
	if len(parts) > MaxSelectors {
		return nil, fmt.Errorf("%d waypoints, more than %d", len(parts), MaxSelectors)
	}
	out := make([]Selector, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if strings.Contains(p, " ") {
			return nil, fmt.Errorf("waypoint %q: a waypoint is role:NAME, group:NAME or a SPIFFE ID, without protocol or port", p)
		}
		sel, err := parseTarget(p)
		if err != nil {
			return nil, fmt.Errorf("waypoint %q: %v", p, err)
		}
		switch sel.Kind {
		case SelectRole, SelectGroup, SelectID:
		default:
			return nil, fmt.Errorf("waypoint %q: want role:NAME, group:NAME or a SPIFFE ID", p)
		}
		out = append(out, sel)
	}
	return out, nil
}
