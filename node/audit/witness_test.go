package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// appendN submits n records to l (pipelined, as the filter will) and
// returns the checkpoint covering them. Nothing else may append meanwhile.
func appendN(t *testing.T, l *Log, n int) Checkpoint {
	t.Helper()
	ctx := ctxT(t)
	before, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Submit(flowEnd(i, TraceID{})); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := l.AwaitCheckpoint(ctx, before+uint64(n)-1)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != before+uint64(n) {
		t.Fatalf("checkpoint of %d entries, want %d", cp.Size, before+uint64(n))
	}
	return cp
}

// TestConsistencyRoots checks the witness's proof arithmetic against the
// reference verifier, over sizes that cross tile boundaries.
func TestConsistencyRoots(t *testing.T) {
	ctx := ctxT(t)
	l := openTest(t, Config{})
	const n = 600
	appendN(t, l, n)
	leaves := make([][]byte, n)
	for i := range n {
		_, e, err := l.Entry(ctx, uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		h := LeafHash(e)
		leaves[i] = h[:]
	}
	root := func(size uint64) []byte {
		r, err := rootFromLeaves(leaves[:size])
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	pairs := [][2]uint64{{255, 257}, {256, 600}, {300, 599}, {1, 2}, {512, 513}}
	for s1 := uint64(1); s1 < 40; s1++ {
		for s2 := s1 + 1; s2 <= 40; s2++ {
			pairs = append(pairs, [2]uint64{s1, s2})
		}
	}
	for _, p := range pairs {
		s1, s2 := p[0], p[1]
		pr, err := ConsistencyProof(ctx, l.Fetcher(), s1, s2)
		if err != nil {
			t.Fatal(err)
		}
		r1, r2 := root(s1), root(s2)
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, s1, s2, pr, r1, r2); err != nil {
			t.Fatalf("%d→%d: reference verifier: %v", s1, s2, err)
		}
		var seed []byte
		if s1&(s1-1) == 0 {
			if seed, err = subtreeRoot(ctx, l.Fetcher(), s1, s2); err != nil {
				t.Fatal(err)
			}
		}
		g1, g2, ok1, err := consistencyRoots(s1, s2, pr, seed)
		if err != nil || !ok1 || !bytes.Equal(g1, r1) || !bytes.Equal(g2, r2) {
			t.Fatalf("%d→%d: roots %x %x (%v, %v), want %x %x", s1, s2, g1, g2, ok1, err, r1, r2)
		}
		if len(pr) > 0 {
			bad := append([][]byte(nil), pr...)
			bad[len(bad)-1] = make([]byte, 32)
			if _, g2, _, err := consistencyRoots(s1, s2, bad, seed); err == nil && bytes.Equal(g2, r2) {
				t.Fatalf("%d→%d: a changed proof reaches the root", s1, s2)
			}
		}
	}
}

type witnessFixture struct {
	log      *Log
	cfg      Config
	w        *Witness
	mu       sync.Mutex
	evidence []Evidence
}

func newWitnessFixture(t *testing.T) *witnessFixture {
	fx := &witnessFixture{cfg: Config{Key: testKey(t), TrustDomain: "a.example", CheckpointInterval: 100e6}}
	fx.log = openTest(t, fx.cfg)
	wk := testKey(t)
	name, _ := WitnessName("b.example", addrW)
	w, err := NewWitness(WitnessConfig{Key: wk, Name: name, OnEvidence: func(e Evidence) {
		fx.mu.Lock()
		defer fx.mu.Unlock()
		fx.evidence = append(fx.evidence, e)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddLog(fx.log.VerifierKey()); err != nil {
		t.Fatal(err)
	}
	fx.w = w
	return fx
}

// rewrite returns a log with the fixture log's key and origin, holding its
// first keep entries and then extra new ones.
func (fx *witnessFixture) rewrite(t *testing.T, keep uint64, extra int) *Log {
	t.Helper()
	var recs []Record
	for i := range extra {
		recs = append(recs, flowEnd(1000+i, TraceID{}))
	}
	cfg := fx.cfg
	cfg.Storage = Memory(0)
	r, err := Rewrite(ctxT(t), cfg, fx.log.Fetcher(), keep, recs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func (fx *witnessFixture) refused(r Reason) uint64 { return fx.w.Stats().Refused[r.String()] }

func TestWitnessCosignsAndLogServesCosignatures(t *testing.T) {
	ctx := ctxT(t)
	fx := newWitnessFixture(t)
	cp10 := appendN(t, fx.log, 10)
	line, err := fx.w.CosignFrom(ctx, cp10.Raw, fx.log.Fetcher())
	if err != nil {
		t.Fatal(err)
	}
	// The log refuses the cosignature until it knows the witness.
	if err := fx.log.AddCosignature(line); !errors.Is(err, ErrUnknownWitness) {
		t.Fatalf("cosignature from an unknown witness: %v", err)
	}
	if err := fx.log.SetWitnesses([]string{fx.w.CosignerKey()}); err != nil {
		t.Fatal(err)
	}
	if err := fx.log.AddCosignature(line); err != nil {
		t.Fatal(err)
	}
	wcp, ok := fx.log.Witnessed()
	if !ok || wcp.Size != 10 || len(wcp.Cosigners) != 1 || wcp.Cosigners[0] != fx.w.Name() {
		t.Fatalf("Witnessed = %+v, %v", wcp, ok)
	}
	wv, err := NewCosignatureVerifier(fx.w.CosignerKey())
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCheckpoint(wcp.Raw, fx.log.Origin(), fx.log.Verifier(), wv)
	if err != nil || len(got.Cosigners) != 1 {
		t.Fatalf("cosigned checkpoint: %+v, %v", got, err)
	}
	// A reader who does not know the witness sees an unknown signature.
	if got, err := ParseCheckpoint(wcp.Raw, fx.log.Origin(), fx.log.Verifier()); err != nil || got.Unknown != 1 {
		t.Fatalf("cosigned checkpoint without the witness key: %+v, %v", got, err)
	}
	// A cosignature line that is not one, or tampered, is refused.
	bad := bytes.Clone(line)
	bad[len(bad)-3] ^= 1
	for _, l := range [][]byte{bad, []byte("— x\n"), nil, append(bytes.Clone(line), line...)} {
		if err := fx.log.AddCosignature(l); err == nil {
			t.Errorf("AddCosignature(%q) accepted", l)
		}
	}
	if s := fx.log.Stats(); s.Cosigned != 1 || s.CosigRefused != 5 {
		t.Fatalf("log cosignature counters %+v", s)
	}

	// Growth with a proof from the log: cosigned.
	cp15 := appendN(t, fx.log, 5)
	pr, err := ConsistencyProof(ctx, fx.log.Fetcher(), 10, cp15.Size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.w.Cosign(ctx, cp15.Raw, 10, pr); err != nil {
		t.Fatal(err)
	}
	// The same checkpoint again: cosigned again (idempotent).
	if _, err := fx.w.Cosign(ctx, cp15.Raw, 15, nil); err != nil {
		t.Fatal(err)
	}
	if last, _ := fx.w.Last(fx.log.Origin()); last.Size != 15 {
		t.Fatalf("last cosigned %d", last.Size)
	}
	if s := fx.w.Stats(); s.Cosigned != 3 {
		t.Fatalf("witness stats %+v", s)
	}
}

func TestWitnessRefuses(t *testing.T) {
	ctx := ctxT(t)
	fx := newWitnessFixture(t)
	cp10 := appendN(t, fx.log, 10)
	if _, err := fx.w.CosignFrom(ctx, cp10.Raw, fx.log.Fetcher()); err != nil {
		t.Fatal(err)
	}
	cp20 := appendN(t, fx.log, 10)
	pr, err := ConsistencyProof(ctx, fx.log.Fetcher(), 10, 20)
	if err != nil {
		t.Fatal(err)
	}

	// A proof with a changed hash.
	bad := append([][]byte(nil), pr...)
	bad[0] = bytes.Repeat([]byte{1}, 32)
	if _, err := fx.w.Cosign(ctx, cp20.Raw, 10, bad); !errors.Is(err, ErrProof) || fx.refused(ReasonBadProof) != 1 {
		t.Fatalf("bad proof: %v, counted %d", err, fx.refused(ReasonBadProof))
	}
	// A proof from another size.
	if _, err := fx.w.Cosign(ctx, cp20.Raw, 3, pr); !errors.Is(err, ErrConflict) || fx.refused(ReasonConflict) != 1 {
		t.Fatalf("conflict: %v", err)
	}
	// A checkpoint signed by another key under the log's origin.
	forger, _ := NewSigner(testKey(t), fx.log.Origin())
	forged, _ := note.Sign(&note.Note{Text: cp20.Text()}, forger)
	if _, err := fx.w.Cosign(ctx, forged, 10, pr); !errors.Is(err, ErrCheckpoint) || fx.refused(ReasonBadSignature) != 1 {
		t.Fatalf("forged: %v", err)
	}
	// A log the witness does not follow.
	other := openTest(t, Config{})
	ocp := appendN(t, other, 1)
	if _, err := fx.w.CosignFrom(ctx, ocp.Raw, other.Fetcher()); !errors.Is(err, ErrUnknownLog) || fx.refused(ReasonUnknownLog) != 1 {
		t.Fatalf("unknown log: %v", err)
	}
	// Not a checkpoint.
	if _, err := fx.w.Cosign(ctx, []byte("hello\n"), 0, nil); !errors.Is(err, ErrCheckpoint) || fx.refused(ReasonMalformed) != 1 {
		t.Fatalf("malformed: %v", err)
	}
	// Tiles whose hashes were changed in transit.
	if _, err := fx.w.CosignFrom(ctx, cp20.Raw, tamperTiles{fx.log.Fetcher()}); !errors.Is(err, ErrProof) || fx.refused(ReasonBadTiles) != 1 {
		t.Fatalf("bad tiles: %v, counted %d", err, fx.refused(ReasonBadTiles))
	}
	// An older checkpoint, consistent: stale, not evidence.
	if _, err := fx.w.CosignFrom(ctx, cp20.Raw, fx.log.Fetcher()); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.w.CosignFrom(ctx, cp10.Raw, fx.log.Fetcher()); !errors.Is(err, ErrStale) || fx.refused(ReasonStale) != 1 {
		t.Fatalf("stale: %v", err)
	}
	if len(fx.evidence) != 0 {
		t.Fatalf("evidence for refusals that are not misbehaviour: %d", len(fx.evidence))
	}
}

// tamperTiles flips a bit of every hash tile it passes on.
type tamperTiles struct{ Fetcher }

func (f tamperTiles) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	t, err := f.Fetcher.ReadTile(ctx, level, index, p)
	if err == nil && len(t) > 0 {
		t = bytes.Clone(t)
		t[len(t)-1] ^= 1
	}
	return t, err
}

// TestWitnessDetectsRewrite truncates and re-appends a log (the Rewrite
// test hook) and checks the witness refuses it with evidence, for a last
// cosigned size that is and is not a power of two.
func TestWitnessDetectsRewrite(t *testing.T) {
	for _, lastSize := range []int{10, 16} {
		for _, tc := range []struct {
			name  string
			keep  uint64
			extra int
			want  error
			kind  Reason
		}{
			{"grown", 5, 20, ErrFork, ReasonFork},
			{"same size", 5, lastSize - 5, ErrFork, ReasonFork},
			{"shrunk", 5, 2, ErrRollback, ReasonRollback},
			{"cut back", 7, 0, ErrRollback, ReasonRollback},
		} {
			t.Run(fmt.Sprintf("%d/%s", lastSize, tc.name), func(t *testing.T) {
				ctx := ctxT(t)
				fx := newWitnessFixture(t)
				cp := appendN(t, fx.log, lastSize)
				if _, err := fx.w.CosignFrom(ctx, cp.Raw, fx.log.Fetcher()); err != nil {
					t.Fatal(err)
				}
				rw := fx.rewrite(t, tc.keep, tc.extra)
				rcp := rw.Checkpoint()
				_, err := fx.w.CosignFrom(ctx, rcp.Raw, rw.Fetcher())
				var mb *MisbehaviourError
				if !errors.Is(err, tc.want) || !errors.As(err, &mb) {
					t.Fatalf("rewrite to %d: %v, want %v", rcp.Size, err, tc.want)
				}
				if !bytes.Equal(mb.Evidence.Old, cp.Raw) || !bytes.Equal(mb.Evidence.New, rcp.Raw) || mb.Evidence.Kind != tc.kind {
					t.Fatalf("evidence %+v", mb.Evidence)
				}
				if fx.refused(tc.kind) != 1 || len(fx.evidence) != 1 {
					t.Fatalf("counted %d, evidence %d", fx.refused(tc.kind), len(fx.evidence))
				}
				// The evidence is a record for the witness's own log, and
				// both checkpoints in it verify under the log's key.
				er := mb.Evidence.Record(t0)
				b, err := er.Encode()
				if err != nil {
					t.Fatal(err)
				}
				back, _ := Decode(b)
				for _, raw := range back.Evidence {
					if _, err := ParseCheckpoint(raw, fx.log.Origin(), fx.log.Verifier()); err != nil {
						t.Fatal(err)
					}
				}
				// The witness keeps the honest checkpoint.
				if last, _ := fx.w.Last(fx.log.Origin()); !bytes.Equal(last.Raw, cp.Raw) {
					t.Fatal("witness moved to the rewritten log")
				}
			})
		}
	}
}

// TestWitnessProofPathFork: a fork shown by the log's own proof (the
// tlog-witness protocol) is evidence too, when the proof reaches the new
// root and shows another old one.
func TestWitnessProofPathFork(t *testing.T) {
	ctx := ctxT(t)
	fx := newWitnessFixture(t)
	cp := appendN(t, fx.log, 10)
	if _, err := fx.w.Cosign(ctx, cp.Raw, 0, nil); err != nil {
		t.Fatal(err)
	}
	rw := fx.rewrite(t, 3, 20)
	rcp := rw.Checkpoint()
	pr, err := ConsistencyProof(ctx, rw.Fetcher(), 10, rcp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.w.Cosign(ctx, rcp.Raw, 10, pr); !errors.Is(err, ErrFork) {
		t.Fatalf("fork through the log's proof: %v", err)
	}
}

// FuzzWitness feeds a witness hostile checkpoints and proofs: it must
// refuse them (or cosign a valid one) and never panic.
func FuzzWitness(f *testing.F) {
	k := testKey(f)
	origin, _ := Origin("a.example", addrA)
	s, _ := NewSigner(k, origin)
	vkey, _ := VerifierKey(origin, k.Public())
	w, _ := NewWitness(WitnessConfig{Key: testKey(f), Name: "b.example/agent6/witness/" + addrW.String()})
	w.AddLog(vkey)
	first, _ := note.Sign(&note.Note{Text: Checkpoint{Origin: origin, Size: 10, Root: [32]byte{1}}.Text()}, s)
	w.Cosign(context.Background(), first, 0, nil)
	next, _ := note.Sign(&note.Note{Text: Checkpoint{Origin: origin, Size: 12, Root: [32]byte{2}}.Text()}, s)
	f.Add(next, uint64(10), bytes.Repeat([]byte{7}, 64))
	f.Add(first, uint64(10), []byte(nil))
	f.Fuzz(func(t *testing.T, raw []byte, oldSize uint64, proofBytes []byte) {
		var pr [][]byte
		for len(proofBytes) >= 32 {
			pr = append(pr, proofBytes[:32])
			proofBytes = proofBytes[32:]
		}
		if len(proofBytes) > 0 {
			pr = append(pr, proofBytes)
		}
		w.Cosign(context.Background(), raw, oldSize, pr)
	})
}

// FuzzAddCosignature feeds a log hostile cosignature lines.
func FuzzAddCosignature(f *testing.F) {
	l, err := Open(context.Background(), Config{Key: testKey(f)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { l.Close() })
	name := "b.example/agent6/witness/" + addrW.String()
	w, _ := NewWitness(WitnessConfig{Key: testKey(f), Name: name})
	l.SetWitnesses([]string{w.CosignerKey()})
	w.AddLog(l.VerifierKey())
	line, _ := w.Cosign(context.Background(), l.Checkpoint().Raw, 0, nil)
	f.Add(line)
	f.Add([]byte("— " + name + " AAAA\n"))
	f.Fuzz(func(t *testing.T, line []byte) {
		l.AddCosignature(line)
	})
}
