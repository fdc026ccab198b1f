package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/agent6/agent6/identity"
)

// MaxWitnessedLogs bounds how many logs one Witness follows.
const MaxWitnessedLogs = 4096

// Errors a Witness returns; each refusal is also counted under its Reason.
var (
	// ErrFork: the log signed two checkpoints that cannot both be its
	// history. The error is a *MisbehaviourError with the evidence.
	ErrFork = errors.New("audit: log forked")
	// ErrRollback: the log presents a tree smaller than one it signed
	// before and cannot show the old one grew from it. *MisbehaviourError.
	ErrRollback = errors.New("audit: log rolled back")
	// ErrStale: an older checkpoint, consistent with the one cosigned; not
	// misbehaviour, nothing to cosign.
	ErrStale = errors.New("audit: stale checkpoint")
	// ErrConflict: the proof starts from a size other than the one the
	// witness last cosigned (C2SP tlog-witness 409); retry from that size.
	ErrConflict = errors.New("audit: proof from the wrong size")
	// ErrUnknownLog: no verifier key is configured for the checkpoint's origin.
	ErrUnknownLog = errors.New("audit: unknown log")
	// ErrUnknownWitness: a cosignature from a key not configured.
	ErrUnknownWitness = errors.New("audit: unknown witness")
)

// Reason names why a witness or a log refused a checkpoint, a proof or a
// cosignature; refusals are counted by reason.
type Reason uint8

// Refusal reasons.
const (
	ReasonMalformed      Reason = iota // not a checkpoint, or too large
	ReasonUnknownLog                   // no key for its origin
	ReasonBadSignature                 // not signed by the log's key
	ReasonBadProof                     // a consistency proof that does not verify
	ReasonBadTiles                     // tiles whose hashes do not match the checkpoint
	ReasonFetch                        // the log's tiles could not be read
	ReasonConflict                     // a proof from another size than the last cosigned
	ReasonStale                        // an older, consistent checkpoint
	ReasonFork                         // two signed histories (evidence)
	ReasonRollback                     // a smaller tree than one signed (evidence)
	ReasonUnknownWitness               // a cosignature from an unknown key
	numReasons
)

var reasonNames = [numReasons]string{
	"malformed", "unknown_log", "bad_signature", "bad_proof", "bad_tiles", "fetch",
	"conflict", "stale", "fork", "rollback", "unknown_witness",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Evidence shows that a log misbehaved: the checkpoint a witness cosigned
// and a later one that cannot follow it. Both are signed by the log, so
// anyone holding its key can check them; with Proof (a fork found through
// a consistency proof that reaches the new root) the inconsistency itself
// can be recomputed.
type Evidence struct {
	Origin string   `json:"origin"`
	Kind   Reason   `json:"-"` // ReasonFork or ReasonRollback
	Old    []byte   `json:"old"`
	New    []byte   `json:"new"`
	Proof  [][]byte `json:"proof,omitempty"`
}

// Record returns the evidence as a record for the witness's own log.
func (e *Evidence) Record(now time.Time) Record {
	return Record{Kind: KindEvidence, Time: now.UTC(), Origin: e.Origin, Reason: e.Kind.String(),
		Evidence: [][]byte{e.Old, e.New}}
}

// MisbehaviourError is the error of a fork or rollback: it wraps ErrFork
// or ErrRollback and carries the evidence.
type MisbehaviourError struct{ Evidence Evidence }

func (e *MisbehaviourError) Error() string {
	return fmt.Sprintf("audit: log %s: %s", e.Evidence.Origin, e.Evidence.Kind)
}

func (e *MisbehaviourError) Unwrap() error {
	if e.Evidence.Kind == ReasonFork {
		return ErrFork
	}
	return ErrRollback
}

// WitnessConfig configures a Witness.
type WitnessConfig struct {
	// Key is the witness node's key; it signs the cosignatures.
	Key identity.PrivateKey
	// Name is the cosigning key's name (WitnessName).
	Name string
	// OnEvidence, if set, is called for each fork or rollback found, before
	// the refusing call returns; phase 2 appends Evidence.Record to the
	// witness's own log and counts it.
	OnEvidence func(Evidence)
	// Logger receives the witness's logs; nil discards them.
	Logger *slog.Logger
}

// Witness checks other nodes' logs and cosigns their checkpoints (C2SP
// tlog-cosignature, cosignature/v1) when each is consistent with the last
// it cosigned; it refuses, counts and reports everything else. A witness
// remembers one checkpoint per log, in memory (State/Restore carry it
// across restarts). It is safe for concurrent use; calls for one log are
// serialised.
type Witness struct {
	cosigner   *Cosigner
	onEvidence func(Evidence)
	logger     *slog.Logger
	refused    [numReasons]atomic.Uint64
	cosigned   atomic.Uint64

	mu   sync.Mutex // guards logs (not the logs' own state)
	logs map[string]*witnessed
}

// witnessed is one log a witness follows.
type witnessed struct {
	verifier note.Verifier
	mu       sync.Mutex // guards last; held across a check, fetches included
	last     Checkpoint // the last cosigned; zero Raw: none yet
}

// NewWitness returns a witness that cosigns with cfg.Key as cfg.Name.
func NewWitness(cfg WitnessConfig) (*Witness, error) {
	c, err := NewCosigner(cfg.Key, cfg.Name)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Witness{cosigner: c, onEvidence: cfg.OnEvidence, logger: logger, logs: make(map[string]*witnessed)}, nil
}

// Name returns the witness's cosigner name.
func (w *Witness) Name() string { return w.cosigner.Name() }

// CosignerKey returns the witness's cosignature verifier key.
func (w *Witness) CosignerKey() string {
	k, _ := CosignerKey(w.cosigner.Name(), w.cosigner.key.Public())
	return k
}

// AddLog follows the log whose note verifier key is vkey (its name is the
// log's origin). Adding a log already followed with the same key keeps
// its state.
func (w *Witness) AddLog(vkey string) error {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("audit: witness: log key: %v", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.logs[v.Name()]; ok {
		if old.verifier.KeyHash() == v.KeyHash() {
			return nil
		}
		return fmt.Errorf("audit: witness: %s has another key", v.Name())
	}
	if len(w.logs) >= MaxWitnessedLogs {
		return fmt.Errorf("audit: witness: more than %d logs", MaxWitnessedLogs)
	}
	w.logs[v.Name()] = &witnessed{verifier: v}
	return nil
}

// RemoveLog stops following origin.
func (w *Witness) RemoveLog(origin string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.logs, origin)
}

// Last returns the checkpoint last cosigned for origin.
func (w *Witness) Last(origin string) (Checkpoint, bool) {
	w.mu.Lock()
	wl := w.logs[origin]
	w.mu.Unlock()
	if wl == nil {
		return Checkpoint{}, false
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	return wl.last, wl.last.Raw != nil
}

// Restore sets the checkpoint last cosigned for a followed log (from a
// witness's persisted state); it must verify.
func (w *Witness) Restore(raw []byte) error {
	wl, cp, err := w.open(raw)
	if err != nil {
		return err
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	wl.last = cp
	return nil
}

// WitnessStats are a witness's counters.
type WitnessStats struct {
	Cosigned uint64            `json:"cosigned"`
	Refused  map[string]uint64 `json:"refused"` // by Reason
}

// Stats returns the witness's counters.
func (w *Witness) Stats() WitnessStats {
	s := WitnessStats{Cosigned: w.cosigned.Load(), Refused: make(map[string]uint64)}
	for r := range numReasons {
		s.Refused[r.String()] = w.refused[r].Load()
	}
	return s
}

// refuse counts a refusal and returns err.
func (w *Witness) refuse(r Reason, origin string, err error) error {
	w.refused[r].Add(1)
	w.logger.Warn("audit: witness refused checkpoint", "origin", origin, "reason", r.String(), "err", err)
	return err
}

// open verifies raw as a checkpoint of a followed log.
func (w *Witness) open(raw []byte) (*witnessed, Checkpoint, error) {
	origin, err := CheckpointOrigin(raw)
	if err != nil {
		return nil, Checkpoint{}, w.refuse(ReasonMalformed, "", err)
	}
	w.mu.Lock()
	wl := w.logs[origin]
	w.mu.Unlock()
	if wl == nil {
		return nil, Checkpoint{}, w.refuse(ReasonUnknownLog, origin, fmt.Errorf("%w: %q", ErrUnknownLog, origin))
	}
	cp, err := ParseCheckpoint(raw, origin, wl.verifier)
	if err != nil {
		return nil, Checkpoint{}, w.refuse(ReasonBadSignature, origin, err)
	}
	return wl, cp, nil
}

// Cosign checks raw, a checkpoint of a followed log, against the one last
// cosigned for it, with proof, the log's RFC 9162 consistency proof from
// oldSize (which must be that checkpoint's size: else ErrConflict), and
// returns its cosignature line (C2SP tlog-witness's add-checkpoint, in a
// function). The first checkpoint of a log is cosigned on first sight.
func (w *Witness) Cosign(ctx context.Context, raw []byte, oldSize uint64, proof [][]byte) ([]byte, error) {
	wl, cp, err := w.open(raw)
	if err != nil {
		return nil, err
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	last := wl.last
	if last.Raw != nil && oldSize != last.Size && cp.Size >= last.Size {
		return nil, w.refuse(ReasonConflict, cp.Origin, fmt.Errorf("%w: %d, last cosigned %d", ErrConflict, oldSize, last.Size))
	}
	if err := w.check(last, cp, proof, nil, ReasonBadProof); err != nil {
		return nil, err
	}
	return w.sign(wl, cp)
}

// CosignFrom checks raw against the checkpoint last cosigned for its log
// using the log's own tiles, read through f: it builds the consistency
// proof itself, so it can tell a log that forked (the tiles reach the new
// root, and show another old one) from tiles that are wrong (they do not
// reach it).
func (w *Witness) CosignFrom(ctx context.Context, raw []byte, f Fetcher) ([]byte, error) {
	wl, cp, err := w.open(raw)
	if err != nil {
		return nil, err
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	last := wl.last
	tf := &trackedFetcher{Fetcher: f}
	var pr [][]byte
	var seed []byte
	switch {
	case last.Raw == nil || last.Size == 0 || last.Size == cp.Size:
	case last.Size < cp.Size:
		if pr, err = ConsistencyProof(ctx, tf, last.Size, cp.Size); err == nil && last.Size&(last.Size-1) == 0 {
			seed, err = subtreeRoot(ctx, tf, last.Size, cp.Size)
		}
		if err != nil {
			if tf.bad.Load() {
				return nil, w.refuse(ReasonBadTiles, cp.Origin, fmt.Errorf("%w: %v", ErrProof, err))
			}
			return nil, w.refuse(ReasonFetch, cp.Origin, err)
		}
	case cp.Size > 0: // smaller: can the log show the old tree grew from this one?
		pr, err = ConsistencyProof(ctx, tf, cp.Size, last.Size)
		if err == nil && cp.Size&(cp.Size-1) == 0 {
			seed, err = subtreeRoot(ctx, tf, cp.Size, last.Size)
		}
		switch {
		case err == nil:
		case tf.missing.Load() || tf.bad.Load():
			pr, seed = nil, nil // the log has no tree of the old size: a rollback
		default:
			return nil, w.refuse(ReasonFetch, cp.Origin, err)
		}
	}
	// A proof built from the log's tiles that does not verify means the
	// tiles are wrong.
	if err := w.check(last, cp, pr, seed, ReasonBadTiles); err != nil {
		return nil, err
	}
	return w.sign(wl, cp)
}

// trackedFetcher remembers whether a tile was missing or malformed: the
// proof builders it serves report errors as text only.
type trackedFetcher struct {
	Fetcher
	missing, bad atomic.Bool
}

func (t *trackedFetcher) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	b, err := t.Fetcher.ReadTile(ctx, level, index, p)
	if errors.Is(err, fs.ErrNotExist) {
		t.missing.Store(true)
	}
	if err == nil && (len(b)%32 != 0 || uint64(len(b)) < tileWidth(p)*32) {
		t.bad.Store(true)
	}
	return b, err
}

// check decides whether cp may follow last. seed, if known, is the root of
// the first min(sizes) leaves as the proof's tree has it (needed to judge a
// proof from a power-of-two size, which omits it). A proof that does not
// verify is refused as bad.
func (w *Witness) check(last, cp Checkpoint, pr [][]byte, seed []byte, bad Reason) error {
	misbehaved := func(kind Reason, pr [][]byte) error {
		e := Evidence{Origin: cp.Origin, Kind: kind, Old: last.Raw, New: cp.Raw, Proof: pr}
		w.logger.Error("audit: log misbehaved", "origin", cp.Origin, "kind", kind.String(),
			"cosigned_size", last.Size, "size", cp.Size)
		if w.onEvidence != nil {
			w.onEvidence(e)
		}
		return w.refuse(kind, cp.Origin, &MisbehaviourError{Evidence: e})
	}
	switch {
	case last.Raw == nil || last.Size == 0:
		return nil // the first checkpoint seen; any tree extends the empty one
	case cp.Size == last.Size:
		if cp.Root != last.Root {
			return misbehaved(ReasonFork, nil)
		}
		return nil
	case cp.Size > last.Size:
		s := seed
		if s == nil && last.Size&(last.Size-1) == 0 {
			s = last.Root[:] // a standard proof assumes the old root here
		}
		r1, r2, ok1, err := consistencyRoots(last.Size, cp.Size, pr, s)
		if err != nil {
			return w.refuse(bad, cp.Origin, err)
		}
		if !bytes.Equal(r2, cp.Root[:]) {
			return w.refuse(bad, cp.Origin, fmt.Errorf("%w: consistency %d→%d does not reach the new root", ErrProof, last.Size, cp.Size))
		}
		if ok1 && (seed != nil || last.Size&(last.Size-1) != 0) && !bytes.Equal(r1, last.Root[:]) {
			return misbehaved(ReasonFork, pr)
		}
		return nil
	default: // cp.Size < last.Size
		if pr == nil {
			return misbehaved(ReasonRollback, nil)
		}
		s := seed
		if s == nil && cp.Size&(cp.Size-1) == 0 {
			s = cp.Root[:]
		}
		r1, r2, _, err := consistencyRoots(cp.Size, last.Size, pr, s)
		if err == nil && bytes.Equal(r1, cp.Root[:]) && bytes.Equal(r2, last.Root[:]) {
			return w.refuse(ReasonStale, cp.Origin, fmt.Errorf("%w: size %d, cosigned %d", ErrStale, cp.Size, last.Size))
		}
		return misbehaved(ReasonRollback, nil)
	}
}

// sign cosigns cp and makes it the log's last.
func (w *Witness) sign(wl *witnessed, cp Checkpoint) ([]byte, error) {
	signed, err := note.Sign(&note.Note{Text: cp.Text()}, w.cosigner)
	if err != nil {
		return nil, fmt.Errorf("audit: cosign: %w", err)
	}
	lines := sigLines(signed)
	if len(lines) != 1 {
		return nil, fmt.Errorf("audit: cosign: %d signature lines", len(lines))
	}
	wl.last = cp
	w.cosigned.Add(1)
	return lines[0], nil
}

// SetWitnesses sets the witnesses whose cosignatures the log accepts, by
// their cosigner keys (CosignerKey). Phase 2 sets them from membership:
// the peers with the witness role, or as configured.
func (l *Log) SetWitnesses(vkeys []string) error {
	m := make(map[string]note.Verifier, len(vkeys))
	for _, k := range vkeys {
		v, err := NewCosignatureVerifier(k)
		if err != nil {
			return err
		}
		m[v.Name()] = v
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.witKeys = m
	return nil
}

// AddCosignature takes a witness's cosignature line ("— <name>
// <base64>\n") for one of the log's kept checkpoints. A cosignature from a
// key not set by SetWitnesses is refused (ErrUnknownWitness), as is one
// that verifies for none of them (ErrCheckpoint); both are counted. The
// log serves the newest checkpoint it holds cosignatures for with them.
func (l *Log) AddCosignature(line []byte) error {
	refuse := func(err error) error {
		l.stats.cosigRefused.Add(1)
		return err
	}
	if len(line) > 1024 || !bytes.HasPrefix(line, []byte("— ")) || !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
		return refuse(fmt.Errorf("%w: not a signature line", ErrCheckpoint))
	}
	name, _, _ := strings.Cut(strings.TrimPrefix(string(line), "— "), " ")
	l.mu.Lock()
	v := l.witKeys[name]
	hist := append([]Checkpoint(nil), l.history...)
	l.mu.Unlock()
	if v == nil {
		return refuse(fmt.Errorf("%w: %q", ErrUnknownWitness, name))
	}
	for i := len(hist) - 1; i >= 0; i-- {
		cp := hist[i]
		n, err := note.Open(append(bytes.Clone(cp.Raw), line...), note.VerifierList(l.verifier, v))
		if err != nil || len(n.Sigs) != 2 {
			continue
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		switch {
		case l.witCP.Raw == nil || cp.Size > l.witCP.Size:
			l.witCP = cp
			l.cosigs = map[string][]byte{name: bytes.Clone(line)}
		case cp.Size == l.witCP.Size && cp.Root == l.witCP.Root:
			l.cosigs[name] = bytes.Clone(line)
		default:
			return refuse(fmt.Errorf("%w: cosignature of an older checkpoint", ErrStale))
		}
		l.stats.cosigned.Add(1)
		return nil
	}
	return refuse(fmt.Errorf("%w: cosignature by %s verifies for no kept checkpoint", ErrCheckpoint, name))
}

// Witnessed returns the newest checkpoint the log holds cosignatures for,
// with them (Raw includes their lines; Cosigners names them).
func (l *Log) Witnessed() (Checkpoint, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.witCP.Raw == nil {
		return Checkpoint{}, false
	}
	cp := l.witCP
	cp.Raw = l.withCosignaturesLocked(cp.Raw)
	cp.Cosigners = slices.Sorted(maps.Keys(l.cosigs))
	return cp, true
}

// withCosignatures appends the cosignatures the log holds for raw's
// checkpoint, if any.
func (l *Log) withCosignatures(raw []byte) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.withCosignaturesLocked(raw)
}

func (l *Log) withCosignaturesLocked(raw []byte) []byte {
	if l.witCP.Raw == nil || !bytes.Equal(raw, l.witCP.Raw) {
		return raw
	}
	out := bytes.Clone(raw)
	for _, name := range slices.Sorted(maps.Keys(l.cosigs)) {
		out = append(out, l.cosigs[name]...)
	}
	return out
}
