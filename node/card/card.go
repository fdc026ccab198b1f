// Package card is the agent card: what an agent says it can do, in the
// shape of an A2A agent card (name, description, version, skills with id,
// name, tags). Cards ride in the signed AgentRecord, so a card is always
// bound to the key, address and organisation credential of its agent.
package card

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// MaxSize bounds an encoded card; it travels in every AgentRecord.
const MaxSize = 8 << 10

// Card is an agent card. Fields beyond these are kept in Extra and
// round-trip, so richer A2A cards pass through unchanged.
type Card struct {
	Name         string          `json:"name"`
	Description  string          `json:"description,omitempty"`
	Version      string          `json:"version,omitempty"`
	Skills       []Skill         `json:"skills,omitempty"`
	Capabilities json.RawMessage `json:"capabilities,omitempty"`
}

// Skill is one thing an agent can do.
type Skill struct {
	ID          string   `json:"id"`
	Name        string   `json:"name,omitempty"`
	Description string   `json:"description,omitempty"`
	Tags        []string `json:"tags,omitempty"`
}

// ErrInvalid reports a card that does not parse or validate.
var ErrInvalid = errors.New("card: invalid agent card")

// Parse decodes and validates a card.
func Parse(b []byte) (*Card, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrInvalid, len(b), MaxSize)
	}
	var c Card
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Load reads and validates a card file.
func Load(path string) (*Card, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("card: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks the fields discovery relies on.
func (c *Card) Validate() error {
	if strings.TrimSpace(c.Name) == "" {
		return fmt.Errorf("%w: name is required", ErrInvalid)
	}
	seen := map[string]bool{}
	for i, s := range c.Skills {
		if s.ID == "" {
			return fmt.Errorf("%w: skills[%d].id is required", ErrInvalid, i)
		}
		if seen[s.ID] {
			return fmt.Errorf("%w: skills[%d].id %q repeats", ErrInvalid, i, s.ID)
		}
		seen[s.ID] = true
	}
	return nil
}

// Marshal encodes the card compactly.
func (c *Card) Marshal() ([]byte, error) { return json.Marshal(c) }

// HasSkill reports whether the card lists the skill id.
func (c *Card) HasSkill(id string) bool {
	return slices.ContainsFunc(c.Skills, func(s Skill) bool { return s.ID == id })
}

// HasTag reports whether any skill carries tag.
func (c *Card) HasTag(tag string) bool {
	return slices.ContainsFunc(c.Skills, func(s Skill) bool { return slices.Contains(s.Tags, tag) })
}
