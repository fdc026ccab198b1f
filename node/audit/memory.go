package audit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api/layout"
)

// DefaultMemoryEntries bounds an in-memory log made by Memory.
const DefaultMemoryEntries = 1 << 18

// ErrFull reports an append to an in-memory log at its bound.
var ErrFull = errors.New("audit: in-memory log full")

// Memory keeps the log in memory, for a program that gives no directory
// (an embedded Node without Dir, tests). It is not durable: the log ends
// with the process. It holds at most maxEntries records (0 means
// DefaultMemoryEntries); an append past that fails with ErrFull. It is a
// Tessera driver of its own (Tessera ships none in memory): entries are
// integrated as they are added, with tiles kept as the node hashes at
// every eighth level of the tree, about 32 bytes per entry beyond the
// entry itself.
func Memory(maxEntries int) Storage {
	if maxEntries <= 0 {
		maxEntries = DefaultMemoryEntries
	}
	return &memStorage{max: uint64(maxEntries)}
}

type memStorage struct {
	max uint64
	wg  sync.WaitGroup // the checkpoint publisher

	mu         sync.Mutex // guards the fields below
	started    bool
	entries    [][]byte // bundle-encoded, by index
	levels     [][]byte // levels[L]: the hashes of the complete nodes at tree level 8L, by index
	rng        *compact.Range
	checkpoint []byte
	published  uint64    // size of checkpoint
	pubTime    time.Time // when it was signed
}

var (
	_ tessera.LogReader = (*memStorage)(nil)
	_ Storage           = (*memStorage)(nil)
)

func (m *memStorage) Driver(context.Context) (tessera.Driver, error) { return m, nil }
func (m *memStorage) StateDir() string                               { return "" }
func (m *memStorage) Durable() bool                                  { return false }

func (m *memStorage) Close() error {
	m.wg.Wait()
	return nil
}

// Appender implements Tessera's append lifecycle for its NewAppender.
func (m *memStorage) Appender(ctx context.Context, opts *tessera.AppendOptions) (*tessera.Appender, tessera.LogReader, error) {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: in-memory storage opened twice", ErrConfig)
	}
	m.started = true
	hasher := rfc6962.DefaultHasher
	m.rng = (&compact.RangeFactory{Hash: hasher.HashChildren}).NewEmptyRange(0)
	m.mu.Unlock()
	publish := opts.CheckpointPublisher(m, http.DefaultClient)
	cp, err := publish(ctx, 0, hasher.EmptyRoot())
	if err != nil {
		return nil, nil, fmt.Errorf("audit: first checkpoint: %w", err)
	}
	m.mu.Lock()
	m.checkpoint, m.pubTime = cp, time.Now()
	m.mu.Unlock()
	interval, republish := opts.CheckpointInterval(), opts.CheckpointRepublishInterval()
	m.wg.Go(func() { m.publishLoop(ctx, publish, interval, republish) })
	return &tessera.Appender{Add: m.add}, m, nil
}

// publishLoop signs a checkpoint every interval while the tree grows, and
// every republish while it does not.
func (m *memStorage) publishLoop(ctx context.Context, publish func(context.Context, uint64, []byte) ([]byte, error), interval, republish time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		size := m.rng.End()
		stale := republish > 0 && time.Since(m.pubTime) >= republish
		if size == m.published && !stale {
			m.mu.Unlock()
			continue
		}
		root, err := m.rootLocked()
		m.mu.Unlock()
		if err != nil {
			continue
		}
		cp, err := publish(ctx, size, root)
		if err != nil {
			continue
		}
		m.mu.Lock()
		if size >= m.published {
			m.checkpoint, m.published, m.pubTime = cp, size, time.Now()
		}
		m.mu.Unlock()
	}
}

func (m *memStorage) rootLocked() ([]byte, error) {
	if m.rng.End() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	return m.rng.GetRootHash(nil)
}

// add sequences and integrates e at once.
func (m *memStorage) add(_ context.Context, e *tessera.Entry) tessera.IndexFuture {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx := m.rng.End()
	if idx >= m.max {
		return func() (tessera.Index, error) { return tessera.Index{}, ErrFull }
	}
	m.entries = append(m.entries, e.MarshalBundleData(idx))
	err := m.rng.Append(e.LeafHash(), func(id compact.NodeID, h []byte) {
		if id.Level%layout.TileHeight != 0 {
			return
		}
		l := int(id.Level / layout.TileHeight)
		for len(m.levels) <= l {
			m.levels = append(m.levels, nil)
		}
		m.levels[l] = append(m.levels[l], h...)
	})
	if err != nil { // cannot happen: the range is only ever appended to here
		return func() (tessera.Index, error) { return tessera.Index{}, err }
	}
	return func() (tessera.Index, error) { return tessera.Index{Index: idx}, nil }
}

// ReadCheckpoint implements tessera.LogReader.
func (m *memStorage) ReadCheckpoint(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.checkpoint == nil {
		return nil, os.ErrNotExist
	}
	return m.checkpoint, nil
}

// ReadTile implements tessera.LogReader: the first p (or 256) hashes of
// tile (level, index), if the tree has them.
func (m *memStorage) ReadTile(_ context.Context, level, index uint64, p uint8) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := tileWidth(p)
	if level >= uint64(len(m.levels)) || index > (1<<56) {
		return nil, os.ErrNotExist
	}
	hashes := m.levels[level]
	first, end := index*layout.TileWidth*32, (index*layout.TileWidth+w)*32
	if end > uint64(len(hashes)) {
		return nil, os.ErrNotExist
	}
	return append([]byte(nil), hashes[first:end]...), nil
}

// ReadEntryBundle implements tessera.LogReader.
func (m *memStorage) ReadEntryBundle(_ context.Context, index uint64, p uint8) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := tileWidth(p)
	if index > (1<<56) || (index*layout.EntryBundleWidth+w) > uint64(len(m.entries)) {
		return nil, os.ErrNotExist
	}
	var b []byte
	for _, e := range m.entries[index*layout.EntryBundleWidth : index*layout.EntryBundleWidth+w] {
		b = append(b, e...)
	}
	return b, nil
}

// IntegratedSize implements tessera.LogReader.
func (m *memStorage) IntegratedSize(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rng.End(), nil
}

// NextIndex implements tessera.LogReader.
func (m *memStorage) NextIndex(ctx context.Context) (uint64, error) { return m.IntegratedSize(ctx) }

// tileWidth is the number of hashes or entries in a tile or bundle of
// partial width p (0: a full one).
func tileWidth(p uint8) uint64 {
	if p == 0 {
		return layout.TileWidth
	}
	return uint64(p)
}
