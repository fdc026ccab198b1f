package identity

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDelegation(t *testing.T) {
	owner, _ := GeneratePrivateKey()
	task, _ := GeneratePrivateKey()
	sub, _ := GeneratePrivateKey()
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	trace := TraceID{1, 2, 3}
	d := Delegation{Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Class: "tool-call", Sensitivity: "low",
		Scope: []string{"spiffe://example.org/*"}, Budget: Budget{Rate: 10, FanOut: 3}, Depth: 1, NotAfter: exp, Pseudonym: owner.TaskPseudonym("t1"), TraceID: trace}
	link, err := Delegate(owner, task, d)
	if err != nil {
		t.Fatal(err)
	}
	got, rest, err := ParseLink(append(link.Marshal(), 7))
	if err != nil || !got.Child.Equal(task.Public()) || got.Class != "tool-call" || !got.NotAfter.Equal(exp) || got.Budget.FanOut != 3 || got.TraceID != trace {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if len(rest) != 1 || rest[0] != 7 {
		t.Fatalf("rest %v", rest)
	}
	if a, _ := task.Public().Addr(); got.ChildAddr() != a {
		t.Fatal("child address")
	}
	// A sub-agent: signed by the task, depth 2.
	sd := Delegation{Child: sub.Public(), Parent: task.Public(), Owner: owner.Public(), Depth: 2, NotAfter: exp, TraceID: trace,
		Scope: d.Scope, Budget: Budget{Rate: 5, FanOut: 3}}
	if _, err := Delegate(task, sub, sd); err != nil {
		t.Fatal(err)
	}
	if err := sd.Within(got); err != nil {
		t.Fatalf("narrower child refused: %v", err)
	}
	// Refusals.
	for name, bad := range map[string]Delegation{
		"depth 0":              {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 0, NotAfter: exp},
		"too deep":             {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: MaxDelegationDepth + 1, NotAfter: exp},
		"depth 1 not by owner": {Child: sub.Public(), Parent: task.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp},
		"no expiry":            {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1},
		"delegates to itself":  {Child: owner.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp},
		"negative budget":      {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp, Budget: Budget{FanOut: -1}},
		"long scope entry":     {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp, Scope: []string{strings.Repeat("x", 300)}},
	} {
		signer := owner
		if bad.Parent.Equal(task.Public()) {
			signer = task
		}
		if _, err := SignDelegation(signer, bad); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	// Signed by someone other than the parent it names.
	forged, _ := SignRecord(sub, RecordDelegation, link.Record.Payload)
	if _, err := ParseDelegation(forged); !errors.Is(err, ErrBadRecord) {
		t.Errorf("forged: %v", err)
	}
	if owner.TaskPseudonym("a") == owner.TaskPseudonym("b") || owner.TaskPseudonym("a") != owner.TaskPseudonym("a") || task.TaskPseudonym("a") == owner.TaskPseudonym("a") {
		t.Error("pseudonyms not stable per agent and task")
	}
}

// A delegation needs its child's acceptance: nobody can delegate to a key
// they do not hold, so nobody can claim another key's address as a task.
func TestDelegationProofOfPossession(t *testing.T) {
	owner, _ := GeneratePrivateKey()
	victim, _ := GeneratePrivateKey() // another agent's key: the owner does not hold it
	other, _ := GeneratePrivateKey()
	exp := time.Now().Add(time.Hour)
	d := Delegation{Child: victim.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp}
	rec, err := SignDelegation(owner, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Delegate(owner, other, d); !errors.Is(err, ErrBadRecord) {
		t.Errorf("Delegate with a child key that is not d.Child: %v", err)
	}
	acceptedByOther, _ := Accept(other, rec)
	valid, _ := Accept(victim, rec)
	otherRec, _ := SignDelegation(owner, Delegation{Child: victim.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp.Add(time.Minute)})
	badSig := valid
	badSig.Signature = append([]byte(nil), valid.Signature...)
	badSig.Signature[0] ^= 1
	for name, l := range map[string]Link{
		"no acceptance":                {Record: rec},
		"accepted by another key":      {Record: rec, Acceptance: acceptedByOther},
		"acceptance of another record": {Record: otherRec, Acceptance: valid},
		"acceptance forged":            {Record: rec, Acceptance: badSig},
		"acceptance is a delegation":   {Record: rec, Acceptance: rec},
	} {
		b := l.Record.Marshal()
		if l.Acceptance.Type != 0 {
			b = append(b, l.Acceptance.Marshal()...)
		}
		if _, _, err := ParseLink(b); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
	if _, _, err := ParseLink(Link{Record: rec, Acceptance: valid}.Marshal()); err != nil {
		t.Fatalf("valid link refused: %v", err)
	}
}

// A child never reaches beyond its parent.
func TestDelegationWithin(t *testing.T) {
	k, _ := GeneratePrivateKey()
	exp := time.Now().Add(time.Hour)
	parent := Delegation{NotAfter: exp, Scope: []string{"a", "b"}, Budget: Budget{Rate: 10, Bytes: 1000, FanOut: 3}, TraceID: TraceID{9}}
	ok := Delegation{NotAfter: exp, Scope: []string{"a"}, Budget: Budget{Rate: 10, Bytes: 10, FanOut: 1}, TraceID: TraceID{9}}
	if err := ok.Within(&parent); err != nil {
		t.Fatalf("narrower child refused: %v", err)
	}
	_ = k
	for name, mod := range map[string]func(*Delegation){
		"outlives":        func(d *Delegation) { d.NotAfter = exp.Add(time.Second) },
		"wider scope":     func(d *Delegation) { d.Scope = []string{"a", "c"} },
		"unscoped":        func(d *Delegation) { d.Scope = nil },
		"faster":          func(d *Delegation) { d.Budget.Rate = 11 },
		"unlimited rate":  func(d *Delegation) { d.Budget.Rate = 0 },
		"more bytes":      func(d *Delegation) { d.Budget.Bytes = 1001 },
		"unlimited bytes": func(d *Delegation) { d.Budget.Bytes = 0 },
		"wider fan-out":   func(d *Delegation) { d.Budget.FanOut = 4 },
		"another trace":   func(d *Delegation) { d.TraceID = TraceID{8} },
	} {
		c := ok
		c.Scope = append([]string(nil), ok.Scope...)
		mod(&c)
		if err := c.Within(&parent); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// An unlimited, unscoped parent lets its child be anything narrower in time.
	free := Delegation{NotAfter: exp}
	if err := ok.Within(&free); err == nil {
		t.Error("trace id changed under an untraced parent")
	}
	ok.TraceID = TraceID{}
	if err := ok.Within(&free); err != nil {
		t.Errorf("child of an unlimited parent refused: %v", err)
	}
}

func TestTraceID(t *testing.T) {
	id := TraceID{0xab, 1}
	var back TraceID
	if err := back.UnmarshalText([]byte(id.String())); err != nil || back != id {
		t.Fatalf("round trip %v %v", back, err)
	}
	for _, bad := range []string{"", "AB010000000000000000000000000000", "zz", "ab01"} {
		if _, err := ParseTraceID(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseDelegation(f *testing.F) {
	owner, _ := PrivateKeyFromSeed(make([]byte, 32))
	seed := make([]byte, 32)
	seed[0] = 9
	task, _ := PrivateKeyFromSeed(seed)
	rec, _ := SignDelegation(owner, Delegation{Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: time.Unix(2e9, 0)})
	f.Add(rec.Payload)
	f.Fuzz(func(t *testing.T, payload []byte) {
		r, err := SignRecord(owner, RecordDelegation, payload)
		if err != nil {
			return
		}
		ParseDelegation(r)
	})
}

// FuzzParseLink feeds whole links, as they arrive from a peer: whatever
// parses has a verified record and acceptance that name each other.
func FuzzParseLink(f *testing.F) {
	owner, _ := PrivateKeyFromSeed(make([]byte, 32))
	seed := make([]byte, 32)
	seed[0] = 9
	task, _ := PrivateKeyFromSeed(seed)
	l, _ := Delegate(owner, task, Delegation{Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: time.Unix(2e9, 0)})
	f.Add(l.Marshal())
	f.Add(l.Record.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		d, rest, err := ParseLink(b)
		if err != nil {
			return
		}
		if len(rest) > len(b) || d.Depth < 1 {
			t.Fatalf("parsed %+v rest %d of %d", d, len(rest), len(b))
		}
	})
}
