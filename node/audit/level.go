package audit

import (
	"fmt"
	"strings"
)

// Level is how much a flow records, as the deciding policy's @log
// obligation says ("log=none|flow|full"). It bounds flow records only:
// admissions, revocations, policy documents, delegations and evidence are
// always recorded. Records are per flow, never per packet, at every level.
type Level uint8

// Levels. The zero value is LevelFlow, the default.
const (
	// LevelFlow: one record when the flow ends (addresses, tasks, ports,
	// counters, times, decision, path), and one when a flow is denied.
	LevelFlow Level = 0
	// LevelNone: nothing about the flow.
	LevelNone Level = 1
	// LevelFull: a record when the flow starts, with its decision, and one
	// when it ends.
	LevelFull Level = 2
)

// ParseLevel parses "none", "flow" or "full", the values of the @log
// obligation (an obligation string "log=full" is read too).
func ParseLevel(s string) (Level, error) {
	switch strings.TrimPrefix(s, "log=") {
	case "flow", "":
		return LevelFlow, nil
	case "none":
		return LevelNone, nil
	case "full":
		return LevelFull, nil
	}
	return LevelFlow, fmt.Errorf("audit: log level %q: want none, flow or full", s)
}

func (l Level) String() string {
	switch l {
	case LevelNone:
		return "none"
	case LevelFull:
		return "full"
	case LevelFlow:
		return "flow"
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// Keeps reports whether a flow at level l records r. Records of other
// kinds than flows are always kept.
func (l Level) Keeps(r *Record) bool {
	switch r.Kind {
	case KindFlowStart:
		return l == LevelFull || (l == LevelFlow && r.Verdict == VerdictDeny)
	case KindFlowEnd:
		return l != LevelNone
	}
	return true
}
