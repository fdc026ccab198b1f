package card

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`{"name":"tool","version":"1","skills":[{"id":"search","name":"Search","tags":["web","fast"]}],"capabilities":{"streaming":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.HasSkill("search") || c.HasSkill("x") || !c.HasTag("web") || c.HasTag("slow") || string(c.Capabilities) != `{"streaming":true}` {
		t.Fatalf("card = %+v", c)
	}
	for _, bad := range []string{``, `{}`, `{"name":" "}`, `{"name":"a","skills":[{}]}`, `{"name":"a","skills":[{"id":"x"},{"id":"x"}]}`, `[1]`} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%s) = %v, want ErrInvalid", bad, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"name":"tool","skills":[{"id":"search","tags":["web"]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}
