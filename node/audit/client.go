package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
)

// Fetcher reads a log's resources as the C2SP tlog-tiles API serves them:
// the checkpoint, hash tiles and entry bundles (p is a partial width, 0 a
// full one). A resource the log does not have is an error wrapping
// fs.ErrNotExist. Methods may block, honour ctx and are safe for
// concurrent use. Tessera's LogReader is one; DirFetcher and HTTPFetcher
// are others. What a Fetcher returns is hostile until verified: the
// functions below check every byte against a signed checkpoint.
type Fetcher interface {
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error)
	ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error)
}

// maxBundleSize bounds a fetched entry bundle: 256 entries of the largest size.
const maxBundleSize = layout.EntryBundleWidth * (2 + MaxRecordSize)

// DirFetcher reads a log kept by POSIX in dir, without opening it for
// writing: for `agent6 audit verify --dir` and tests. A partial tile or
// bundle that has been replaced by the full one is read from the full one.
func DirFetcher(dir string) Fetcher { return dirFetcher(dir) }

type dirFetcher string

func (d dirFetcher) read(path string, max int64) ([]byte, error) {
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(path)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("audit: %s: over %d bytes", path, max)
	}
	return b, nil
}

func (d dirFetcher) partialOrFull(path func(p uint8) string, p uint8, max int64) ([]byte, error) {
	b, err := d.read(path(p), max)
	if p != 0 && errors.Is(err, fs.ErrNotExist) {
		b, err = d.read(path(0), max)
	}
	return b, err
}

func (d dirFetcher) ReadCheckpoint(context.Context) ([]byte, error) {
	return d.read(layout.CheckpointPath, MaxCheckpointSize)
}

func (d dirFetcher) ReadTile(_ context.Context, level, index uint64, p uint8) ([]byte, error) {
	return d.partialOrFull(func(p uint8) string { return layout.TilePath(level, index, p) }, p, layout.TileWidth*32)
}

func (d dirFetcher) ReadEntryBundle(_ context.Context, index uint64, p uint8) ([]byte, error) {
	return d.partialOrFull(func(p uint8) string { return layout.EntriesPath(index, p) }, p, maxBundleSize)
}

// HTTPFetcher reads a log over the C2SP tlog-tiles HTTP API at base (e.g.
// "http://[2001:21:…]:7948"), with client (nil: http.DefaultClient).
// Responses are size-bounded; a 404 is fs.ErrNotExist.
func HTTPFetcher(c *http.Client, base string) Fetcher {
	if c == nil {
		c = http.DefaultClient
	}
	return httpFetcher{c: c, base: strings.TrimSuffix(base, "/")}
}

type httpFetcher struct {
	c    *http.Client
	base string
}

func (h httpFetcher) get(ctx context.Context, path string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/"+path, nil)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("audit: fetch %s: %w", path, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, fmt.Errorf("audit: fetch %s: %w", path, fs.ErrNotExist)
	case http.StatusForbidden:
		return nil, fmt.Errorf("audit: fetch %s: %w", path, ErrForbidden)
	default:
		return nil, fmt.Errorf("audit: fetch %s: %s", path, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("audit: fetch %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("audit: fetch %s: over %d bytes", path, max)
	}
	return b, nil
}

func (h httpFetcher) ReadCheckpoint(ctx context.Context) ([]byte, error) {
	return h.get(ctx, layout.CheckpointPath, MaxCheckpointSize)
}

func (h httpFetcher) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	return h.get(ctx, layout.TilePath(level, index, p), layout.TileWidth*32)
}

func (h httpFetcher) ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error) {
	return h.get(ctx, layout.EntriesPath(index, p), maxBundleSize)
}

// tileFetcher returns f's tiles, refusing any that does not hold exactly
// the hashes asked for (a server may answer a partial request with the full
// tile; the extra hashes are cut, not trusted).
func tileFetcher(f Fetcher) client.TileFetcherFunc {
	return func(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
		t, err := f.ReadTile(ctx, level, index, p)
		if err != nil {
			return nil, err
		}
		w := tileWidth(p)
		if uint64(len(t)) < w*32 || len(t)%32 != 0 || len(t) > layout.TileWidth*32 {
			return nil, fmt.Errorf("%w: tile %d/%d of %d bytes, want %d hashes", ErrProof, level, index, len(t), w)
		}
		return t[:w*32], nil
	}
}

// bundle fetches entry bundle index of a tree of size and returns exactly
// its entries for that size.
func bundle(ctx context.Context, f Fetcher, index, size uint64) ([][]byte, error) {
	p := layout.PartialTileSize(0, index, size)
	raw, err := f.ReadEntryBundle(ctx, index, p)
	if err != nil {
		return nil, err
	}
	var b api.EntryBundle
	if err := b.UnmarshalText(raw); err != nil {
		return nil, fmt.Errorf("%w: entry bundle %d: %v", ErrProof, index, err)
	}
	w := tileWidth(p)
	if uint64(len(b.Entries)) < w {
		return nil, fmt.Errorf("%w: entry bundle %d has %d entries, want %d", ErrProof, index, len(b.Entries), w)
	}
	return b.Entries[:w], nil
}

// LeafHash is the RFC 6962 hash of an entry: SHA-256(0x00 || entry).
func LeafHash(entry []byte) [32]byte {
	var h [32]byte
	copy(h[:], rfc6962.DefaultHasher.HashLeaf(entry))
	return h
}

// Proven is a record with its proof of inclusion in a checkpoint's tree.
type Proven struct {
	Index  uint64   `json:"index"`
	Record Record   `json:"record"`
	Entry  []byte   `json:"entry"` // the record's encoding, the tree's leaf
	Proof  [][]byte `json:"proof"` // RFC 9162 inclusion proof for Index in a tree of Checkpoint.Size
}

// Verify checks p's inclusion in cp: the entry hashes, through the proof,
// to cp's root, and the record is the entry's decoding.
func (p *Proven) Verify(cp Checkpoint) error {
	if p.Index >= cp.Size {
		return fmt.Errorf("%w: index %d outside a tree of %d", ErrProof, p.Index, cp.Size)
	}
	h := LeafHash(p.Entry)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.Index, cp.Size, h[:], p.Proof, cp.Root[:]); err != nil {
		return fmt.Errorf("%w: inclusion of %d in %d: %v", ErrProof, p.Index, cp.Size, err)
	}
	r, err := Decode(p.Entry)
	if err != nil {
		return err
	}
	if !r.Equal(&p.Record) {
		return fmt.Errorf("%w: record %d is not its entry", ErrProof, p.Index)
	}
	return nil
}

// FetchProven fetches entry index from f with its inclusion proof for cp,
// and verifies both: a tile or bundle that does not hash to cp's root is
// refused (ErrProof).
func FetchProven(ctx context.Context, f Fetcher, cp Checkpoint, index uint64) (Proven, error) {
	if index >= cp.Size {
		return Proven{}, fmt.Errorf("%w: index %d outside a tree of %d", ErrNotFound, index, cp.Size)
	}
	entries, err := bundle(ctx, f, index/layout.EntryBundleWidth, cp.Size)
	if err != nil {
		return Proven{}, err
	}
	return proveEntry(ctx, f, cp, index, entries[index%layout.EntryBundleWidth])
}

func proveEntry(ctx context.Context, f Fetcher, cp Checkpoint, index uint64, entry []byte) (Proven, error) {
	pb, err := client.NewProofBuilder(ctx, cp.Size, tileFetcher(f))
	if err != nil {
		return Proven{}, fmt.Errorf("audit: %w", err)
	}
	pr, err := pb.InclusionProof(ctx, index)
	if err != nil {
		return Proven{}, fmt.Errorf("audit: inclusion proof for %d: %w", index, err)
	}
	rec, err := Decode(entry)
	if err != nil {
		return Proven{}, fmt.Errorf("audit: entry %d: %w", index, err)
	}
	p := Proven{Index: index, Record: rec, Entry: append([]byte(nil), entry...), Proof: pr}
	if err := p.Verify(cp); err != nil {
		return Proven{}, err
	}
	return p, nil
}

// ConsistencyProof builds, from f's tiles, the RFC 9162 proof that the tree
// of size small is a prefix of the tree of size large.
func ConsistencyProof(ctx context.Context, f Fetcher, small, large uint64) ([][]byte, error) {
	pb, err := client.NewProofBuilder(ctx, large, tileFetcher(f))
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	p, err := pb.ConsistencyProof(ctx, small, large)
	if err != nil {
		return nil, fmt.Errorf("audit: consistency proof %d→%d: %w", small, large, err)
	}
	return p, nil
}

// VerifyConsistency checks that proof shows old's tree to be a prefix of
// new's (ErrProof if not).
func VerifyConsistency(old, new Checkpoint, pr [][]byte) error {
	if old.Origin != new.Origin {
		return fmt.Errorf("%w: checkpoints of %q and %q", ErrProof, old.Origin, new.Origin)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, new.Size, pr, old.Root[:], new.Root[:]); err != nil {
		return fmt.Errorf("%w: consistency %d→%d: %v", ErrProof, old.Size, new.Size, err)
	}
	return nil
}

// CheckConsistency fetches from f the proof that old is a prefix of new and
// verifies it.
func CheckConsistency(ctx context.Context, f Fetcher, old, new Checkpoint) error {
	if old.Size > new.Size {
		return fmt.Errorf("%w: size %d after %d", ErrProof, new.Size, old.Size)
	}
	var pr [][]byte
	if old.Size > 0 && old.Size < new.Size {
		var err error
		if pr, err = ConsistencyProof(ctx, f, old.Size, new.Size); err != nil {
			return err
		}
	}
	return VerifyConsistency(old, new, pr)
}

// consistencyRoots computes, from an RFC 9162 consistency proof between
// sizes size1 < size2, the two roots it implies: the root of the first
// size1 leaves and of all size2. When size1 is a power of two the standard
// proof omits the first root (the verifier supplies it); seed then gives it
// if known, else the proof cannot attest it and ok1 is false. It is the
// RFC's verification algorithm with the comparisons left to the caller, so
// a witness can tell a proof that does not reach the new root (a bad proof)
// from one that does, and shows a different old root (a fork).
func consistencyRoots(size1, size2 uint64, pr [][]byte, seed []byte) (root1, root2 []byte, ok1 bool, err error) {
	if size1 == 0 || size1 >= size2 {
		return nil, nil, false, fmt.Errorf("%w: sizes %d→%d", ErrProof, size1, size2)
	}
	h := rfc6962.DefaultHasher
	inner := bits.Len64((size1 - 1) ^ (size2 - 1)) // innerProofSize(size1-1, size2)
	border := bits.OnesCount64((size1 - 1) >> uint(inner))
	shift := bits.TrailingZeros64(size1)
	inner -= shift
	start := 1
	var first []byte
	if size1 == 1<<uint(shift) {
		start = 0
		first, ok1 = seed, seed != nil
	} else if len(pr) > 0 {
		first, ok1 = pr[0], true
	}
	if len(pr) != start+inner+border || first == nil {
		return nil, nil, false, fmt.Errorf("%w: proof of %d hashes for %d→%d", ErrProof, len(pr), size1, size2)
	}
	for _, p := range pr {
		if len(p) != sha256.Size {
			return nil, nil, false, fmt.Errorf("%w: proof hash of %d bytes", ErrProof, len(p))
		}
	}
	rest := pr[start:]
	mask := (size1 - 1) >> uint(shift)
	// The first root: chain the inner nodes on the seed's right side only.
	root1 = first
	for i, p := range rest[:inner] {
		if (mask>>uint(i))&1 == 1 {
			root1 = h.HashChildren(p, root1)
		}
	}
	for _, p := range rest[inner:] {
		root1 = h.HashChildren(p, root1)
	}
	// The second root: chain every inner node, then the border.
	root2 = first
	for i, p := range rest[:inner] {
		if (mask>>uint(i))&1 == 0 {
			root2 = h.HashChildren(root2, p)
		} else {
			root2 = h.HashChildren(p, root2)
		}
	}
	for _, p := range rest[inner:] {
		root2 = h.HashChildren(p, root2)
	}
	return root1, root2, ok1, nil
}

// subtreeRoot fetches from f, for a tree of size size, the root of its
// first n leaves when n is a power of two (one node of the tree).
func subtreeRoot(ctx context.Context, f Fetcher, n, size uint64) ([]byte, error) {
	nodes, err := client.FetchRangeNodes(ctx, n, func(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
		// Ask for the tile as the larger tree has it: a log that has grown
		// past n may no longer keep the partial tiles of size n.
		return tileFetcher(f)(ctx, level, index, layout.PartialTileSize(level, index, size))
	})
	if err != nil {
		return nil, err
	}
	if len(nodes) != 1 {
		return nil, fmt.Errorf("%w: %d range nodes for a subtree", ErrProof, len(nodes))
	}
	return nodes[0], nil
}

// rootFromLeaves computes the RFC 6962 root of leaf hashes.
func rootFromLeaves(leaves [][]byte) ([]byte, error) {
	if len(leaves) == 0 {
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	r := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for _, l := range leaves {
		if err := r.Append(l, nil); err != nil {
			return nil, err
		}
	}
	return r.GetRootHash(nil)
}
