package audit

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
)

// Storage is where a log is kept: a Tessera driver for its entries, tiles
// and checkpoints, and a place for the log's own small state (the trace
// index and the checkpoint history). One Storage backs one Log. Choosing
// another Tessera driver (MySQL, an object store) is writing another
// Storage, nothing else.
type Storage interface {
	// Driver returns the Tessera driver. Open calls it once.
	Driver(ctx context.Context) (tessera.Driver, error)
	// StateDir returns a local directory for the log's own files, or ""
	// to keep them in memory.
	StateDir() string
	// Durable reports whether a record Append acknowledged survives a
	// crash of the process.
	Durable() bool
	// Close releases what the storage holds. Log.Close calls it once the
	// appender has stopped and every goroutine the Storage started has
	// returned.
	Close() error
}

// stateDirName is the log's own directory inside a POSIX log directory,
// next to Tessera's ".state"; the tlog-tiles API never serves it.
const stateDirName = ".agent6"

// POSIX keeps the log in dir with Tessera's POSIX driver: the C2SP
// tlog-tiles layout (checkpoint, tile/, tile/entries/), every file written
// to a temporary name, fsynced and renamed, so an integrated entry survives
// a crash. The sidecar's state_dir and an embedded Node's Dir hold it (as
// DIR/audit).
func POSIX(dir string) Storage { return posixStorage{dir: dir} }

type posixStorage struct{ dir string }

func (p posixStorage) Driver(ctx context.Context) (tessera.Driver, error) {
	if p.dir == "" {
		return nil, fmt.Errorf("%w: POSIX storage without a directory", ErrConfig)
	}
	return posix.New(ctx, posix.Config{Path: p.dir})
}

func (p posixStorage) StateDir() string { return filepath.Join(p.dir, stateDirName) }
func (p posixStorage) Durable() bool    { return true }
func (p posixStorage) Close() error     { return nil }
