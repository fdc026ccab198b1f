package audit

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// The trace index maps trace ids to entry indices. It is a file of 24-byte
// rows, trace id (16) || entry index (8, big-endian), appended in log order
// by the log's indexer, and nothing in memory: a lookup reads the file
// through once (24 bytes per traced record; a million records, 24 MB,
// read in tens of milliseconds), so memory stays flat however long the
// log. A row with the all-zero trace id (which W3C forbids as a trace id)
// is a mark: every entry below its index has been indexed. The file is not
// fsynced; after a crash Open cuts it back to its last mark and the
// indexer re-reads the log from there, so the index always ends up
// complete. An in-memory log keeps the same rows in memory.
const (
	indexFileName = "trace.idx"
	indexRowSize  = 24
)

type traceIndex struct {
	mu   sync.Mutex // guards the fields below; held across file I/O
	f    *os.File   // nil for an in-memory index
	mem  []byte     // the rows of an in-memory index
	size int64      // bytes of rows written
	mark uint64     // entries below this are indexed
}

// openIndex opens (or creates) the index in dir ("" for memory) and cuts it
// back to its last mark not beyond treeSize.
func openIndex(dir string, treeSize uint64) (*traceIndex, error) {
	x := &traceIndex{}
	if dir == "" {
		return x, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: index: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, indexFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: index: %w", err)
	}
	x.f = f
	// Find the last mark within the tree; everything after it is redone.
	var keep int64
	r := bufio.NewReaderSize(f, 64<<10)
	var row [indexRowSize]byte
	for off := int64(0); ; off += indexRowSize {
		if _, err := io.ReadFull(r, row[:]); err != nil {
			break // EOF, or a torn last row
		}
		if isZero(row[:16]) {
			m := binary.BigEndian.Uint64(row[16:])
			if m > treeSize {
				break // the log is shorter than the index says: redo from the previous mark
			}
			keep, x.mark = off+indexRowSize, m
		}
	}
	if err := f.Truncate(keep); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: index: %w", err)
	}
	x.size = keep
	return x, nil
}

// add appends rows for entries up to end (exclusive) and a mark at end.
func (x *traceIndex) add(rows []byte, end uint64) error {
	var mark [indexRowSize]byte
	binary.BigEndian.PutUint64(mark[16:], end)
	rows = append(rows, mark[:]...)
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.f == nil {
		x.mem = append(x.mem, rows...)
	} else if _, err := x.f.WriteAt(rows, x.size); err != nil {
		return fmt.Errorf("audit: index: %w", err)
	}
	x.size += int64(len(rows))
	x.mark = end
	return nil
}

// lookup returns the indices of id's records below the mark, and the mark.
func (x *traceIndex) lookup(id TraceID) ([]uint64, uint64, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var src io.Reader
	if x.f == nil {
		src = bytes.NewReader(x.mem)
	} else {
		src = io.NewSectionReader(x.f, 0, x.size)
	}
	r := bufio.NewReaderSize(src, 64<<10)
	var out []uint64
	var row [indexRowSize]byte
	for {
		if _, err := io.ReadFull(r, row[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return out, x.mark, nil
			}
			return nil, 0, fmt.Errorf("audit: index: %w", err)
		}
		if bytes.Equal(row[:16], id[:]) {
			out = append(out, binary.BigEndian.Uint64(row[16:]))
		}
	}
}

func (x *traceIndex) marked() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.mark
}

func (x *traceIndex) close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.f == nil {
		return nil
	}
	err := x.f.Close()
	x.f = nil
	if errors.Is(err, fs.ErrClosed) {
		return nil
	}
	return err
}
