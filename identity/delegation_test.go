package identity

import (
	"errors"
	"testing"
	"time"
)

func TestDelegation(t *testing.T) {
	owner, _ := GeneratePrivateKey()
	task, _ := GeneratePrivateKey()
	sub, _ := GeneratePrivateKey()
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	d := Delegation{Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Class: "tool-call", Sensitivity: "low",
		Scope: []string{"spiffe://example.org/*"}, Budget: Budget{Rate: 10, FanOut: 3}, Depth: 1, NotAfter: exp, Pseudonym: owner.TaskPseudonym("t1")}
	rec, err := SignDelegation(owner, d)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseSignedRecord(rec.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseDelegation(parsed)
	if err != nil || !got.Child.Equal(task.Public()) || got.Class != "tool-call" || !got.NotAfter.Equal(exp) || got.Budget.FanOut != 3 {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if a, _ := task.Public().Addr(); got.ChildAddr() != a {
		t.Fatal("child address")
	}
	// A sub-agent: signed by the task, depth 2.
	sd := Delegation{Child: sub.Public(), Parent: task.Public(), Owner: owner.Public(), Depth: 2, NotAfter: exp}
	if _, err := SignDelegation(task, sd); err != nil {
		t.Fatal(err)
	}
	// Refusals.
	for name, bad := range map[string]Delegation{
		"depth 0":              {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 0, NotAfter: exp},
		"too deep":             {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: MaxDelegationDepth + 1, NotAfter: exp},
		"depth 1 not by owner": {Child: sub.Public(), Parent: task.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp},
		"no expiry":            {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1},
		"delegates to itself":  {Child: owner.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp},
		"negative budget":      {Child: task.Public(), Parent: owner.Public(), Owner: owner.Public(), Depth: 1, NotAfter: exp, Budget: Budget{FanOut: -1}},
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
	forged, _ := SignRecord(sub, RecordDelegation, rec.Payload)
	if _, err := ParseDelegation(forged); !errors.Is(err, ErrBadRecord) {
		t.Errorf("forged: %v", err)
	}
	if owner.TaskPseudonym("a") == owner.TaskPseudonym("b") || owner.TaskPseudonym("a") != owner.TaskPseudonym("a") || task.TaskPseudonym("a") == owner.TaskPseudonym("a") {
		t.Error("pseudonyms not stable per agent and task")
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
