package policy

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// LogLevel is how much the audit log records of a flow (the @log
// obligation). Higher levels record more; composed obligations take the
// highest.
type LogLevel uint8

const (
	LogDefault LogLevel = iota // no @log: the node's own setting
	LogNone                    // "none": no flow record (admissions and refusals are still logged)
	LogFlow                    // "flow": one record at the flow's start and one at its end
	LogDetail                  // "detail": also the flow's counters at every sweep
)

var logLevelNames = []string{LogDefault: "", LogNone: "none", LogFlow: "flow", LogDetail: "detail"}

func (l LogLevel) String() string {
	if int(l) < len(logLevelNames) {
		return logLevelNames[l]
	}
	return "log-" + strconv.Itoa(int(l))
}

// MarshalText returns the level's name.
func (l LogLevel) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// Obligations are what the permits that allowed a flow ask of it, read
// from their annotations:
//
//	@rate("10")     new flows per second (also "600/m", "3600/h")
//	@bytes("10MB")  bytes (both ways) in all; units B, KB, MB, GB, TB and KiB, MiB, GiB, TiB
//	@fan_out("3")   distinct destinations
//	@log("detail")  audit level: none, flow or detail
//	@via("group:dlp, role:waypoint")  waypoints, in order (enforced by the path-control work)
//
// The zero value asks nothing. Rate, Bytes and FanOut bound the agent
// that owns the principal under that one policy (see Accounting); when
// several permits allowed a flow, every one of their obligations holds.
type Obligations struct {
	Rate   float64    `json:"rate,omitempty"`
	Bytes  uint64     `json:"bytes,omitempty"`
	FanOut int        `json:"fan_out,omitempty"`
	Log    LogLevel   `json:"log,omitempty"`
	Via    []Selector `json:"via,omitempty"`
}

// IsZero reports whether o asks nothing.
func (o *Obligations) IsZero() bool {
	return o.Rate == 0 && o.Bytes == 0 && o.FanOut == 0 && o.Log == LogDefault && len(o.Via) == 0
}

// hasLimits reports whether o carries a budget the accounting enforces.
func (o *Obligations) hasLimits() bool { return o.Rate > 0 || o.Bytes > 0 || o.FanOut > 0 }

// compose adds the obligations of one more permit: the lowest budget, the
// highest log level, and the waypoints after those already required
// (without repeating one).
func (o *Obligations) compose(p *Obligations) {
	o.Rate = minNonZero(o.Rate, p.Rate)
	o.Bytes = minNonZero(o.Bytes, p.Bytes)
	o.FanOut = minNonZero(o.FanOut, p.FanOut)
	o.Log = max(o.Log, p.Log)
	for _, v := range p.Via {
		if !slices.Contains(o.Via, v) {
			o.Via = append(o.Via, v)
		}
	}
}

func minNonZero[T int | uint64 | float64](a, b T) T {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

// String lists the obligations as annotations, "" for none.
func (o *Obligations) String() string {
	var parts []string
	if o.Rate > 0 {
		parts = append(parts, fmt.Sprintf("@rate(%q)", strconv.FormatFloat(o.Rate, 'g', -1, 64)))
	}
	if o.Bytes > 0 {
		parts = append(parts, fmt.Sprintf("@bytes(\"%d\")", o.Bytes))
	}
	if o.FanOut > 0 {
		parts = append(parts, fmt.Sprintf("@fan_out(\"%d\")", o.FanOut))
	}
	if o.Log != LogDefault {
		parts = append(parts, fmt.Sprintf("@log(%q)", o.Log.String()))
	}
	if len(o.Via) > 0 {
		vs := make([]string, len(o.Via))
		for i, v := range o.Via {
			vs[i] = v.String()
		}
		parts = append(parts, fmt.Sprintf("@via(%q)", strings.Join(vs, ", ")))
	}
	return strings.Join(parts, " ")
}

// Annotations a policy may carry: the obligations, @id (its name) and
// @description. Any other is refused, so that a misspelt obligation
// (@fanout) is an error rather than a limit silently not applied.
var knownAnnotations = []string{"id", "description", "rate", "bytes", "fan_out", "log", "via"}

// Bounds on obligation values.
const (
	MaxRate   = 1e6     // new flows per second
	MaxFanOut = 1 << 12 // distinct destinations tracked per budget
)

// parseObligations reads the obligations of one policy from its
// annotations. Obligations on a forbid are refused: they would never
// apply.
func parseObligations(ann map[string]string, forbid bool) (Obligations, error) {
	var o Obligations
	for _, k := range sortedKeys(ann) {
		v := ann[k]
		if !slices.Contains(knownAnnotations, k) {
			return Obligations{}, fmt.Errorf("unknown annotation @%s (known: @%s)", k, strings.Join(knownAnnotations, ", @"))
		}
		if k == "id" || k == "description" {
			continue
		}
		if forbid {
			return Obligations{}, fmt.Errorf("@%s on a forbid policy: obligations belong on permits", k)
		}
		var err error
		switch k {
		case "rate":
			o.Rate, err = parseRate(v)
		case "bytes":
			o.Bytes, err = parseBytes(v)
		case "fan_out":
			o.FanOut, err = parseCount(v, MaxFanOut)
		case "log":
			o.Log, err = parseLogLevel(v)
		case "via":
			o.Via, err = ParseVia(v)
		}
		if err != nil {
			return Obligations{}, fmt.Errorf("@%s(%q): %v", k, v, err)
		}
	}
	return o, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// parseRate reads new flows per second: a positive number, optionally
// followed by /s, /m or /h.
func parseRate(s string) (float64, error) {
	num, per, _ := strings.Cut(s, "/")
	div := 1.0
	switch per {
	case "", "s":
	case "m":
		div = 60
	case "h":
		div = 3600
	default:
		return 0, fmt.Errorf("unit /%s: want /s, /m or /h", per)
	}
	r, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(r) || r <= 0 || r/div > MaxRate || r/div < 1e-6 {
		return 0, fmt.Errorf("want a rate of new flows above 0 and at most %g per second, such as \"10\" or \"600/m\"", float64(MaxRate))
	}
	return r / div, nil
}

var byteUnits = []struct {
	suffix string
	mult   uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// parseBytes reads a byte count: a positive integer with an optional unit.
func parseBytes(s string) (uint64, error) {
	num, mult := s, uint64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 || n > math.MaxUint64/mult {
		return 0, fmt.Errorf("want a positive byte count such as \"1000000\", \"10MB\" or \"1GiB\"")
	}
	return n * mult, nil
}

func parseCount(s string, limit int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > limit {
		return 0, fmt.Errorf("want a whole number from 1 to %d", limit)
	}
	return n, nil
}

func parseLogLevel(s string) (LogLevel, error) {
	for l, n := range logLevelNames {
		if n != "" && n == s {
			return LogLevel(l), nil
		}
	}
	return 0, fmt.Errorf("want none, flow or detail")
}
