package audit

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// MaxCheckpointSize bounds a checkpoint note, signatures and cosignatures
// included; anything longer is refused before any parsing.
const MaxCheckpointSize = 16 << 10

// Checkpoint is a C2SP tlog-checkpoint: a signed note whose text is the
// log's origin, its size and its root hash (RFC 6962 / RFC 9162 hashing).
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   [32]byte
	// Raw is the signed note, as served at /checkpoint.
	Raw []byte
	// Cosigners names the witnesses whose cosignatures verified.
	Cosigners []string
	// Unknown counts the signatures from keys the reader does not know.
	Unknown int
}

// Text returns the checkpoint's note text (what its signatures sign).
func (c Checkpoint) Text() string {
	return fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root[:]))
}

// ParseCheckpoint verifies raw as a checkpoint of the log named origin,
// signed by log, with cosignatures checked against witnesses. Signatures
// from other keys are counted (Unknown) and otherwise ignored; a signature
// from a known key that does not verify refuses the whole checkpoint. It
// refuses input over MaxCheckpointSize before parsing, and checkpoints
// with extension lines (no Agent6 log writes them). Errors wrap
// ErrCheckpoint.
func ParseCheckpoint(raw []byte, origin string, log note.Verifier, witnesses ...note.Verifier) (Checkpoint, error) {
	if len(raw) > MaxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("%w: %d bytes, at most %d", ErrCheckpoint, len(raw), MaxCheckpointSize)
	}
	if log == nil || log.Name() != origin {
		return Checkpoint{}, fmt.Errorf("%w: no verifier for %q", ErrCheckpoint, origin)
	}
	vs := append([]note.Verifier{log}, witnesses...)
	n, err := note.Open(raw, note.VerifierList(vs...))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		if errors.As(err, &unverified) {
			return Checkpoint{}, fmt.Errorf("%w: not signed by %s", ErrCheckpoint, origin)
		}
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	signed := false
	var cosigners []string
	for _, s := range n.Sigs {
		if s.Name == log.Name() && s.Hash == log.KeyHash() {
			signed = true
		} else {
			cosigners = append(cosigners, s.Name)
		}
	}
	if !signed {
		return Checkpoint{}, fmt.Errorf("%w: not signed by %s", ErrCheckpoint, origin)
	}
	c, err := parseCheckpointText(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != origin {
		return Checkpoint{}, fmt.Errorf("%w: origin %q, want %q", ErrCheckpoint, c.Origin, origin)
	}
	c.Raw = bytes.Clone(raw)
	c.Cosigners = cosigners
	c.Unknown = len(n.UnverifiedSigs)
	return c, nil
}

// parseCheckpointText parses a checkpoint's text (origin, size, root),
// refusing anything but the exact form Text writes.
func parseCheckpointText(text string) (Checkpoint, error) {
	lines := strings.Split(text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		return Checkpoint{}, fmt.Errorf("%w: %d lines, want 3", ErrCheckpoint, len(lines)-1)
	}
	var c Checkpoint
	c.Origin = lines[0]
	if !validKeyName(c.Origin) {
		return Checkpoint{}, fmt.Errorf("%w: bad origin", ErrCheckpoint)
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("%w: bad size %q", ErrCheckpoint, lines[1])
	}
	c.Size = size
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(root) != 32 {
		return Checkpoint{}, fmt.Errorf("%w: bad root hash", ErrCheckpoint)
	}
	copy(c.Root[:], root)
	return c, nil
}

// openUnverified reads a checkpoint's text and its origin without checking
// any signature: for a log's own files, and to find which verifier a
// checkpoint needs. Nothing it returns may be trusted.
func openUnverified(raw []byte) (Checkpoint, error) {
	if len(raw) > MaxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("%w: %d bytes", ErrCheckpoint, len(raw))
	}
	i := bytes.Index(raw, []byte("\n\n"))
	if i < 0 {
		return Checkpoint{}, fmt.Errorf("%w: no signature block", ErrCheckpoint)
	}
	c, err := parseCheckpointText(string(raw[:i+1]))
	if err != nil {
		return Checkpoint{}, err
	}
	c.Raw = bytes.Clone(raw)
	return c, nil
}

// CheckpointOrigin returns the origin a checkpoint claims, unverified: to
// pick the verifier to check it with.
func CheckpointOrigin(raw []byte) (string, error) {
	c, err := openUnverified(raw)
	return c.Origin, err
}

// sigLines returns the signature lines of a signed note (each ending in
// '\n'), or nil if raw is not one.
func sigLines(raw []byte) [][]byte {
	i := bytes.LastIndex(raw, []byte("\n\n"))
	if i < 0 {
		return nil
	}
	var out [][]byte
	for rest := raw[i+2:]; len(rest) > 0; {
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return nil
		}
		out = append(out, rest[:j+1])
		rest = rest[j+1:]
	}
	return out
}
