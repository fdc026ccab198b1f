package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"golang.org/x/mod/sumdb/note"
)

// Report is what a verification checked.
type Report struct {
	Checkpoint Checkpoint        `json:"-"`
	Origin     string            `json:"origin"`
	Size       uint64            `json:"size"`
	Root       []byte            `json:"root"`
	ByKind     map[string]uint64 `json:"by_kind"`
	Tiles      int               `json:"tiles"` // hash tiles compared with the entries
	// Consistent lists the sizes of the earlier checkpoints proven to be
	// prefixes of this one.
	Consistent []uint64 `json:"consistent"`
}

// VerifyLog checks a log end to end through f: the latest checkpoint's
// signature (by v, whose name is the origin); that every entry decodes as
// a canonical record; that the entries hash, together, to the checkpoint's
// root; that every stored hash tile holds exactly the hashes recomputed
// from the entries (so every proof built from them is sound); and that each
// of prev, earlier checkpoints kept by the log or a reader, is consistent
// with it. It reads the whole log once, keeping one tile per level in
// memory. Errors wrap ErrCheckpoint, ErrProof or ErrRecord.
func VerifyLog(ctx context.Context, f Fetcher, v note.Verifier, prev []Checkpoint) (Report, error) {
	raw, err := f.ReadCheckpoint(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("audit: verify: checkpoint: %w", err)
	}
	cp, err := ParseCheckpoint(raw, v.Name(), v)
	if err != nil {
		return Report{}, fmt.Errorf("audit: verify: %w", err)
	}
	rep := Report{Checkpoint: cp, Origin: cp.Origin, Size: cp.Size, Root: cp.Root[:], ByKind: make(map[string]uint64)}

	// One cached tile per level, compared node by node as the range
	// visits each complete node at a tile level.
	type tile struct {
		index uint64
		nodes []byte
	}
	tiles := map[uint64]*tile{}
	var verr error
	visit := func(id compact.NodeID, h []byte) {
		if verr != nil || id.Level%layout.TileHeight != 0 {
			return
		}
		level, ti := uint64(id.Level/layout.TileHeight), id.Index/layout.TileWidth
		t := tiles[level]
		if t == nil || t.index != ti {
			nodes, err := tileFetcher(f)(ctx, level, ti, layout.PartialTileSize(level, ti, cp.Size))
			if err != nil {
				verr = fmt.Errorf("audit: verify: tile %d/%d: %w", level, ti, err)
				return
			}
			t = &tile{index: ti, nodes: nodes}
			tiles[level] = t
			rep.Tiles++
		}
		slot := id.Index % layout.TileWidth
		if uint64(len(t.nodes)) < (slot+1)*32 || !bytes.Equal(t.nodes[slot*32:(slot+1)*32], h) {
			verr = fmt.Errorf("%w: tile %d/%d hash %d does not match the entries", ErrProof, level, ti, slot)
		}
	}
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for bi := uint64(0); bi*layout.EntryBundleWidth < cp.Size; bi++ {
		entries, err := bundle(ctx, f, bi, cp.Size)
		if err != nil {
			return rep, fmt.Errorf("audit: verify: entry bundle %d: %w", bi, err)
		}
		for j, e := range entries {
			i := bi*layout.EntryBundleWidth + uint64(j)
			r, err := Decode(e)
			if err != nil {
				return rep, fmt.Errorf("audit: verify: entry %d: %w", i, err)
			}
			rep.ByKind[r.Kind.String()]++
			h := LeafHash(e)
			if err := rng.Append(h[:], visit); err != nil {
				return rep, fmt.Errorf("audit: verify: %w", err)
			}
			if verr != nil {
				return rep, verr
			}
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
	}
	root, err := rootFromRange(rng)
	if err != nil {
		return rep, fmt.Errorf("audit: verify: %w", err)
	}
	if !bytes.Equal(root, cp.Root[:]) {
		return rep, fmt.Errorf("%w: the entries hash to %x, the checkpoint says %x", ErrProof, root, cp.Root)
	}
	for _, p := range prev {
		if p.Origin != cp.Origin {
			return rep, fmt.Errorf("%w: kept checkpoint of %q", ErrCheckpoint, p.Origin)
		}
		if err := CheckConsistency(ctx, f, p, cp); err != nil {
			return rep, fmt.Errorf("audit: verify: kept checkpoint of size %d: %w", p.Size, err)
		}
		rep.Consistent = append(rep.Consistent, p.Size)
	}
	return rep, nil
}

func rootFromRange(r *compact.Range) ([]byte, error) {
	if r.End() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	return r.GetRootHash(nil)
}

// Verify checks this node's log end to end (VerifyLog), against the
// checkpoints it keeps.
func (l *Log) Verify(ctx context.Context) (Report, error) {
	hist := l.History()
	var prev []Checkpoint
	if len(hist) > 1 {
		prev = hist[:len(hist)-1]
	}
	return VerifyLog(ctx, l.reader, l.verifier, prev)
}

const vkeyFileName = "vkey"

// VerifyDir checks the log kept by POSIX in dir, offline (`agent6 audit
// verify --dir`), against the checkpoints it keeps. vkey is the log's
// verifier key; empty means the one the log wrote into its own directory,
// which proves the log consistent with itself but not that it is the node
// you think (the second result says which key was used).
func VerifyDir(ctx context.Context, dir, vkey string) (Report, string, error) {
	state := filepath.Join(dir, stateDirName)
	if _, err := os.Stat(filepath.Join(dir, layout.CheckpointPath)); err != nil {
		return Report{}, vkey, fmt.Errorf("audit: %s is not a log directory: %w", dir, err)
	}
	if vkey == "" {
		b, err := os.ReadFile(filepath.Join(state, vkeyFileName))
		if err != nil {
			return Report{}, "", fmt.Errorf("audit: %w (give the log's verifier key)", err)
		}
		vkey = strings.TrimSpace(string(b))
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return Report{}, vkey, fmt.Errorf("%w: verifier key: %v", ErrConfig, err)
	}
	var prev []Checkpoint
	b, err := os.ReadFile(filepath.Join(state, historyFileName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Report{}, vkey, fmt.Errorf("audit: %w", err)
	}
	for _, raw := range splitHistory(b) {
		cp, err := ParseCheckpoint(raw, v.Name(), v)
		if err != nil {
			return Report{}, vkey, fmt.Errorf("audit: kept checkpoint: %w", err)
		}
		prev = append(prev, cp)
	}
	rep, err := VerifyLog(ctx, DirFetcher(dir), v, prev)
	return rep, vkey, err
}
