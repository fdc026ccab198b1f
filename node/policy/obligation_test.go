package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseObligations(t *testing.T) {
	cases := []struct {
		ann  map[string]string
		want Obligations
	}{
		{map[string]string{"rate": "10"}, Obligations{Rate: 10}},
		{map[string]string{"rate": "600/m"}, Obligations{Rate: 10}},
		{map[string]string{"rate": "36/h"}, Obligations{Rate: 0.01}},
		{map[string]string{"rate": "0.5/s"}, Obligations{Rate: 0.5}},
		{map[string]string{"bytes": "1000"}, Obligations{Bytes: 1000}},
		{map[string]string{"bytes": "10MB"}, Obligations{Bytes: 10_000_000}},
		{map[string]string{"bytes": "2GiB"}, Obligations{Bytes: 2 << 30}},
		{map[string]string{"fan_out": "3"}, Obligations{FanOut: 3}},
		{map[string]string{"log": "detail"}, Obligations{Log: LogDetail}},
		{map[string]string{"log": "none"}, Obligations{Log: LogNone}},
		{map[string]string{"via": "role:waypoint"}, Obligations{Via: []Selector{{Kind: SelectRole, Value: "waypoint"}}}},
		{map[string]string{"id": "x", "description": "anything, really"}, Obligations{}},
	}
	for _, c := range cases {
		got, err := parseObligations(c.ann, false)
		if err != nil {
			t.Errorf("%v: %v", c.ann, err)
			continue
		}
		if got.Rate != c.want.Rate || got.Bytes != c.want.Bytes || got.FanOut != c.want.FanOut || got.Log != c.want.Log || !slices.Equal(got.Via, c.want.Via) {
			t.Errorf("%v = %+v, want %+v", c.ann, got, c.want)
		}
	}
	bad := []map[string]string{
		{"rate": "0"}, {"rate": "-1"}, {"rate": "NaN"}, {"rate": "10/d"}, {"rate": "2e6"}, {"rate": ""},
		{"bytes": "0"}, {"bytes": "10 MB"}, {"bytes": "1.5MB"}, {"bytes": "99999999999999999999TB"}, {"bytes": "MB"},
		{"fan_out": "0"}, {"fan_out": "5000"}, {"fan_out": "x"},
		{"log": "verbose"}, {"via": ""}, {"via": "skill:x"},
		{"fanout": "3"}, {"advice": "x"},
	}
	for _, ann := range bad {
		if o, err := parseObligations(ann, false); err == nil {
			t.Errorf("%v parsed as %+v, want an error", ann, o)
		}
	}
	if _, err := parseObligations(map[string]string{"rate": "1"}, true); err == nil {
		t.Error("an obligation on a forbid was accepted")
	}
	if _, err := parseObligations(map[string]string{"id": "f", "description": "d"}, true); err != nil {
		t.Errorf("@id and @description on a forbid: %v", err)
	}
}

func TestComposeObligations(t *testing.T) {
	var o Obligations
	o.compose(&Obligations{Rate: 10, Bytes: 1000, Log: LogFlow, Via: []Selector{{Kind: SelectGroup, Value: "dlp"}}})
	o.compose(&Obligations{Rate: 5, FanOut: 3, Log: LogNone, Via: []Selector{{Kind: SelectGroup, Value: "dlp"}, {Kind: SelectRole, Value: "waypoint"}}})
	want := Obligations{Rate: 5, Bytes: 1000, FanOut: 3, Log: LogFlow, Via: []Selector{{Kind: SelectGroup, Value: "dlp"}, {Kind: SelectRole, Value: "waypoint"}}}
	if o.Rate != want.Rate || o.Bytes != want.Bytes || o.FanOut != want.FanOut || o.Log != want.Log || !slices.Equal(o.Via, want.Via) {
		t.Errorf("composed %+v, want %+v", o, want)
	}
	if s := o.String(); s != `@rate("5") @bytes("1000") @fan_out("3") @log("flow") @via("group:dlp, role:waypoint")` {
		t.Errorf("String() = %s", s)
	}
}

// TestObligationsInDecision: the obligations of every permit that allowed,
// on both sides of a cross-domain flow, reach the decision; a forbid's
// id, not a permit's, is what a denial names.
func TestObligationsInDecision(t *testing.T) {
	home := mustCompile(t, "example.org", 1, `
@id("to-partner") @rate("10") @via("group:dlp") @log("detail")
permit (principal in Group::"planners", action == Action::"connect", resource in TrustDomain::"partner.example");
@id("to-partner-2") @fan_out("2") @rate("20")
permit (principal, action == Action::"connect", resource in Group::"partner.example/public");
@id("no-icmp")
forbid (principal, action, resource) when { context has proto && context.proto == "icmp" };
`, nil)
	away := mustCompile(t, "partner.example", 4, `
@id("from-example") @bytes("1MB") @via("spiffe://partner.example/agent/gw")
permit (principal in TrustDomain::"example.org", action == Action::"connect", resource == Agent::"`+quotes.Addr.String()+`");
`, nil)
	e := engineWith(t, home, away)
	d := e.Decide(connect(AgentParty(planner), AgentParty(quotes), ProtoTCP, 443))
	if !d.Allow || d.Reason != ReasonPolicy {
		t.Fatalf("denied: %s", d.Summary())
	}
	if !slices.Equal(d.Out.Policies, []string{"to-partner", "to-partner-2"}) || !slices.Equal(d.In.Policies, []string{"from-example"}) {
		t.Errorf("deciding policies out %v in %v", d.Out.Policies, d.In.Policies)
	}
	o := d.Obligations
	if o.Rate != 10 || o.FanOut != 2 || o.Bytes != 1_000_000 || o.Log != LogDetail {
		t.Errorf("obligations %+v", o)
	}
	if got := (&Obligations{Via: o.Via}).String(); got != `@via("group:dlp, spiffe://partner.example/agent/gw")` {
		t.Errorf("via %s: want the sender's waypoints, then the receiver's", got)
	}
	if len(d.Limits) != 3 || d.Limits[2].Domain != "partner.example" || !d.Limits[2].inbound {
		t.Errorf("limits %+v", d.Limits)
	}
	d = e.Decide(connect(AgentParty(planner), AgentParty(quotes), ProtoICMP, 0))
	if d.Allow || d.Reason != ReasonPolicyDenied || d.Rule() != "example.org/no-icmp" {
		t.Errorf("icmp: allow=%v reason=%s rule=%s", d.Allow, d.Reason, d.Rule())
	}
	if !d.Obligations.IsZero() || d.Limits != nil {
		t.Errorf("a denial carries obligations %+v", d.Obligations)
	}
}

func TestAnnotationErrorsNamePolicy(t *testing.T) {
	_, err := Compile(&Document{TrustDomain: "example.org", Serial: 1, Policy: "permit (principal, action, resource);\n\n  @id(\"slow\") @rate(\"fast\")\npermit (principal, action, resource);\n"})
	var pe *Error
	if !errors.As(err, &pe) || !errors.Is(err, ErrAnnotation) {
		t.Fatalf("err %v, want an *Error wrapping ErrAnnotation", err)
	}
	if pe.Policy != "slow" || pe.Line != 3 || pe.Column != 3 || !strings.Contains(err.Error(), `@rate("fast")`) {
		t.Errorf("error %q: policy %q at %d:%d", err, pe.Policy, pe.Line, pe.Column)
	}
}
