package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api/layout"
	"golang.org/x/mod/sumdb/note"

	"github.com/agent6/agent6/identity"
)

// Defaults for Config's zero values.
const (
	DefaultCheckpointInterval = time.Second
	DefaultBatchSize          = 4096
	DefaultBatchAge           = 10 * time.Millisecond
	DefaultQueueSize          = 1 << 16
	// historySize is how many past checkpoints a log keeps (checkpoints
	// file): enough to prove consistency across a restart and to answer a
	// witness that is a few checkpoints behind.
	historySize = 16
)

// Config configures a Log. Only Key is required.
type Config struct {
	// Key is the node's key: it signs the checkpoints and derives the
	// commitment secret (unless Secret is set).
	Key identity.PrivateKey
	// Addr is the node's overlay address, in the log's origin. Zero means
	// the address derived from Key.
	Addr netip.Addr
	// TrustDomain is the node's trust domain, in the log's origin; empty
	// means NoTrustDomain.
	TrustDomain string
	// Storage keeps the log; nil means Memory(0), which is not durable.
	Storage Storage
	// CheckpointInterval is how often a new checkpoint is signed while the
	// log grows (0: DefaultCheckpointInterval; at least 100 ms).
	CheckpointInterval time.Duration
	// BatchSize and BatchAge bound a batch of entries Tessera integrates at
	// once: a batch is written when it has BatchSize entries or its first
	// has waited BatchAge (0: DefaultBatchSize, DefaultBatchAge).
	BatchSize int
	BatchAge  time.Duration
	// QueueSize bounds Submit's queue (0: DefaultQueueSize).
	QueueSize int
	// Secret is the commitment secret; nil means SecretFromKey(Key).
	Secret *[32]byte
	// OnCheckpoint, if set, is called with each new checkpoint the log
	// signs, in order, from one goroutine; it must not block (phase 2
	// gossips it).
	OnCheckpoint func(Checkpoint)
	// Logger receives the log's logs; nil discards them.
	Logger *slog.Logger
}

// Log is a node's verifiable audit log: an append-only Merkle tree of
// records (Tessera), with C2SP checkpoints signed by the node's key. It is
// safe for concurrent use.
type Log struct {
	origin    string
	signer    *Signer
	verifier  note.Verifier
	vkey      string
	committer *Committer
	storage   Storage
	logger    *slog.Logger
	onCP      func(Checkpoint)
	interval  time.Duration

	add      tessera.AddFn
	shutdown func(context.Context) error
	reader   tessera.LogReader
	cancel   context.CancelFunc
	drain    sync.WaitGroup // submitLoop and resolveLoop
	wg       sync.WaitGroup // the other goroutines

	queue    chan []byte              // Submit → submitLoop
	futures  chan tessera.IndexFuture // submitLoop → resolveLoop
	wakeIdx  chan struct{}            // an append was integrated
	index    *traceIndex
	hub      *hub
	stats    counters
	served   serveCounters
	stateDir string

	// indexRun and cpRun serialise indexTo and observeCheckpoint, which
	// their loops and Close both run. Lock order: cpRun or indexRun, then
	// closeMu or mu, then the index's and the hub's own.
	indexRun, cpRun sync.Mutex

	// closeMu orders appends against Close: appends hold it for reading,
	// Close takes it for writing once, to refuse further appends.
	closeMu sync.RWMutex
	closed  bool

	mu      sync.Mutex    // guards the fields below
	latest  Checkpoint    // the newest checkpoint seen
	history []Checkpoint  // the last historySize checkpoints, oldest first
	cpWait  chan struct{} // closed and replaced at each new checkpoint
	cosigs  map[string][]byte
	witKeys map[string]note.Verifier
	witCP   Checkpoint // the newest checkpoint with cosignatures
}

// Open opens (or creates) the log cfg describes and starts it. It returns
// once the log has a checkpoint.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Key.IsZero() {
		return nil, fmt.Errorf("%w: Key: none", ErrConfig)
	}
	addr := cfg.Addr
	if !addr.IsValid() {
		var err error
		if addr, err = cfg.Key.Public().Addr(); err != nil {
			return nil, fmt.Errorf("%w: Key: %v", ErrConfig, err)
		}
	}
	origin, err := Origin(cfg.TrustDomain, addr)
	if err != nil {
		return nil, err
	}
	signer, err := NewSigner(cfg.Key, origin)
	if err != nil {
		return nil, err
	}
	vkey, err := VerifierKey(origin, cfg.Key.Public())
	if err != nil {
		return nil, err
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	secret := cfg.Secret
	if secret == nil {
		s := SecretFromKey(cfg.Key)
		secret = &s
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.CheckpointInterval < 100*time.Millisecond {
		return nil, fmt.Errorf("%w: CheckpointInterval %v is under 100ms", ErrConfig, cfg.CheckpointInterval)
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchAge <= 0 {
		cfg.BatchAge = DefaultBatchAge
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.Storage == nil {
		cfg.Storage = Memory(0)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{
		origin: origin, signer: signer, verifier: verifier, vkey: vkey,
		committer: NewCommitter(*secret), storage: cfg.Storage,
		logger: logger.With("origin", origin), onCP: cfg.OnCheckpoint,
		interval: cfg.CheckpointInterval,
		queue:    make(chan []byte, cfg.QueueSize),
		futures:  make(chan tessera.IndexFuture, cfg.QueueSize),
		wakeIdx:  make(chan struct{}, 1),
		hub:      newHub(),
		stateDir: cfg.Storage.StateDir(),
		cpWait:   make(chan struct{}),
		cosigs:   make(map[string][]byte),
		witKeys:  make(map[string]note.Verifier),
	}
	if err := l.start(ctx, cfg); err != nil {
		cfg.Storage.Close()
		return nil, err
	}
	return l, nil
}

func (l *Log) start(ctx context.Context, cfg Config) error {
	driver, err := cfg.Storage.Driver(ctx)
	if err != nil {
		return fmt.Errorf("audit: storage: %w", err)
	}
	// The appender's goroutines live until Close cancels runCtx.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	opts := tessera.NewAppendOptions().
		WithCheckpointSigner(l.signer).
		WithCheckpointInterval(cfg.CheckpointInterval).
		WithBatching(uint(cfg.BatchSize), cfg.BatchAge).
		WithShutdownTimeout(30 * time.Second)
	appender, shutdown, reader, err := tessera.NewAppender(runCtx, driver, opts)
	if err != nil {
		cancel()
		return fmt.Errorf("audit: open log: %w", err)
	}
	l.add, l.shutdown, l.reader, l.cancel = appender.Add, shutdown, reader, cancel
	fail := func(err error) error {
		shutdown(ctx)
		cancel()
		return err
	}
	size, err := reader.IntegratedSize(ctx)
	if err != nil {
		return fail(fmt.Errorf("audit: open log: %w", err))
	}
	if l.index, err = openIndex(l.stateDir, size); err != nil {
		return fail(err)
	}
	if err := l.loadHistory(ctx); err != nil {
		l.index.close()
		return fail(err)
	}
	if l.stateDir != "" {
		// The verifier key, for `agent6 audit verify --dir` without --vkey.
		if err := writeFileAtomic(filepath.Join(l.stateDir, vkeyFileName), []byte(l.vkey+"\n")); err != nil {
			l.index.close()
			return fail(err)
		}
	}
	l.drain.Go(func() { l.submitLoop(runCtx) })
	l.drain.Go(l.resolveLoop)
	l.wg.Go(func() { l.indexLoop(runCtx) })
	l.wg.Go(func() { l.checkpointLoop(runCtx) })
	l.wake()
	return nil
}

// Origin returns the log's origin (see Origin).
func (l *Log) Origin() string { return l.origin }

// VerifierKey returns the log's C2SP note verifier key.
func (l *Log) VerifierKey() string { return l.vkey }

// Verifier returns the log's note verifier.
func (l *Log) Verifier() note.Verifier { return l.verifier }

// Durable reports whether an acknowledged record survives a crash.
func (l *Log) Durable() bool { return l.storage.Durable() }

// Fetcher returns a Fetcher over the log's own storage.
func (l *Log) Fetcher() Fetcher { return l.reader }

// Append writes r to the log and returns its index once it is integrated
// into the tree and durable (for a durable Storage): the record is then
// acknowledged, and survives a crash. A checkpoint covering it follows
// within the checkpoint interval (AwaitCheckpoint). Append blocks; many
// goroutines appending at once share Tessera's batches.
func (l *Log) Append(ctx context.Context, r Record) (uint64, error) {
	b, err := r.Encode()
	if err != nil {
		l.stats.refused.Add(1)
		return 0, err
	}
	return l.AppendEncoded(ctx, b)
}

// AppendEncoded is Append for a record already encoded (it is checked).
func (l *Log) AppendEncoded(ctx context.Context, b []byte) (uint64, error) {
	if _, err := Decode(b); err != nil {
		l.stats.refused.Add(1)
		return 0, err
	}
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return 0, ErrClosed
	}
	f := l.add(ctx, tessera.NewEntry(b))
	l.closeMu.RUnlock()
	idx, err := f()
	if err != nil {
		l.stats.failed.Add(1)
		return 0, fmt.Errorf("audit: append: %w", err)
	}
	l.stats.appended.Add(1)
	l.wake()
	return idx.Index, nil
}

// Submit queues r to be appended, without waiting: for callers that must
// not block, like the packet filter's flow-end hook. It returns
// ErrQueueFull (and counts it) when the queue is full, ErrClosed after
// Close, or r's encoding error. A submitted record is acknowledged when
// integrated, as with Append; Stats counts the outcome, and followers see
// it when it is.
func (l *Log) Submit(r Record) error {
	b, err := r.Encode()
	if err != nil {
		l.stats.refused.Add(1)
		return err
	}
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.queue <- b:
		return nil
	default:
		l.stats.dropped.Add(1)
		return ErrQueueFull
	}
}

// submitLoop hands queued records to Tessera, keeping many in flight so
// that batches fill, and passes their futures on in order.
func (l *Log) submitLoop(ctx context.Context) {
	defer close(l.futures)
	for b := range l.queue {
		l.futures <- l.add(ctx, tessera.NewEntry(b))
	}
}

// resolveLoop waits for each submitted record to be integrated.
func (l *Log) resolveLoop() {
	for f := range l.futures {
		if _, err := f(); err != nil {
			l.stats.failed.Add(1)
			l.logger.Warn("audit: append failed", "err", err)
			continue
		}
		l.stats.appended.Add(1)
		if len(l.futures) == 0 {
			l.wake()
		}
	}
	l.wake()
}

func (l *Log) wake() {
	select {
	case l.wakeIdx <- struct{}{}:
	default:
	}
}

// indexLoop follows the integrated tree: it indexes each new record's trace
// and hands it to subscribers, in log order.
func (l *Log) indexLoop(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wakeIdx:
		case <-t.C:
		}
		if err := l.indexTo(ctx); err != nil && ctx.Err() == nil {
			l.stats.indexErrors.Add(1)
			l.logger.Warn("audit: indexing", "err", err)
		}
	}
}

// indexTo indexes every integrated entry not yet indexed.
func (l *Log) indexTo(ctx context.Context) error {
	l.indexRun.Lock()
	defer l.indexRun.Unlock()
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return err
	}
	from := l.index.marked()
	follow := l.hub.active()
	for from < size {
		bi := from / layout.EntryBundleWidth
		entries, err := bundle(ctx, l.reader, bi, size)
		if err != nil {
			return fmt.Errorf("bundle %d: %w", bi, err)
		}
		end := min(size, (bi+1)*layout.EntryBundleWidth)
		var rows []byte
		for i := from; i < end; i++ {
			r, err := Decode(entries[i%layout.EntryBundleWidth])
			if err != nil {
				// Only Append writes here, and it checks: a record that
				// does not decode means the files were changed under us.
				l.stats.indexErrors.Add(1)
				l.logger.Error("audit: entry does not decode", "index", i, "err", err)
				continue
			}
			if !r.Trace.IsZero() {
				rows = append(rows, r.Trace[:]...)
				rows = append(rows, byte(i>>56), byte(i>>48), byte(i>>40), byte(i>>32), byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
			}
			if follow {
				l.hub.publish(Entry{Index: i, Record: r})
			}
		}
		if err := l.index.add(rows, end); err != nil {
			return err
		}
		from = end
	}
	return nil
}

// checkpointLoop watches for the checkpoints Tessera publishes, checks each
// is consistent with the one before, and keeps the history.
func (l *Log) checkpointLoop(ctx context.Context) {
	poll := min(l.interval/4, 100*time.Millisecond)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := l.observeCheckpoint(ctx); err != nil && ctx.Err() == nil {
			l.logger.Warn("audit: checkpoint", "err", err)
		}
	}
}

// observeCheckpoint reads the published checkpoint and, if it is new,
// verifies it against the last one and records it.
func (l *Log) observeCheckpoint(ctx context.Context) error {
	l.cpRun.Lock()
	defer l.cpRun.Unlock()
	raw, err := l.reader.ReadCheckpoint(ctx)
	if err != nil {
		return err
	}
	l.mu.Lock()
	prev := l.latest
	l.mu.Unlock()
	if bytes.Equal(raw, prev.Raw) {
		return nil
	}
	cp, err := ParseCheckpoint(raw, l.origin, l.verifier)
	if err != nil {
		l.stats.selfInconsistent.Add(1)
		return fmt.Errorf("own checkpoint: %w", err)
	}
	if prev.Raw != nil {
		if cp.Size < prev.Size || (cp.Size == prev.Size && cp.Root != prev.Root) {
			l.stats.selfInconsistent.Add(1)
			return fmt.Errorf("%w: own checkpoint of size %d after %d", ErrProof, cp.Size, prev.Size)
		}
		if cp.Size == prev.Size {
			// A republished checkpoint of the same tree.
			l.setLatest(cp, false)
			return nil
		}
		if err := CheckConsistency(ctx, l.reader, prev, cp); err != nil {
			l.stats.selfInconsistent.Add(1)
			return fmt.Errorf("own checkpoint: %w", err)
		}
	}
	l.setLatest(cp, true)
	if err := l.saveHistory(); err != nil {
		return err
	}
	if l.onCP != nil {
		l.onCP(cp)
	}
	return nil
}

func (l *Log) setLatest(cp Checkpoint, grew bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.latest = cp
	if grew || len(l.history) == 0 {
		l.history = append(l.history, cp)
		if len(l.history) > historySize {
			l.history = l.history[len(l.history)-historySize:]
		}
	} else {
		l.history[len(l.history)-1] = cp
	}
	l.stats.checkpoints.Add(1)
	close(l.cpWait)
	l.cpWait = make(chan struct{})
}

// Checkpoint returns the log's latest checkpoint.
func (l *Log) Checkpoint() Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.latest
}

// History returns the checkpoints the log keeps, oldest first: the latest
// and up to 15 before it, across restarts.
func (l *Log) History() []Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Checkpoint(nil), l.history...)
}

// AwaitCheckpoint waits until a checkpoint covers entry index and returns it.
func (l *Log) AwaitCheckpoint(ctx context.Context, index uint64) (Checkpoint, error) {
	for {
		l.mu.Lock()
		cp, wait := l.latest, l.cpWait
		l.mu.Unlock()
		if cp.Size > index {
			return cp, nil
		}
		select {
		case <-ctx.Done():
			return Checkpoint{}, ctx.Err()
		case <-wait:
		}
	}
}

// Subscribe follows the log: each record integrated from now on that
// filter accepts (nil: every record) is delivered, in log order, to a
// buffer of buffer entries (0: DefaultFollowBuffer). A subscriber that
// falls behind misses records, counted; it never slows the log. The
// records delivered are shared: do not modify them.
func (l *Log) Subscribe(buffer int, filter func(*Record) bool) (*Subscription, error) {
	return l.hub.subscribe(buffer, filter)
}

// Entry reads entry index and its record.
func (l *Log) Entry(ctx context.Context, index uint64) (Record, []byte, error) {
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return Record{}, nil, err
	}
	if index >= size {
		return Record{}, nil, fmt.Errorf("%w: entry %d of %d", ErrNotFound, index, size)
	}
	entries, err := bundle(ctx, l.reader, index/layout.EntryBundleWidth, size)
	if err != nil {
		return Record{}, nil, err
	}
	e := entries[index%layout.EntryBundleWidth]
	r, err := Decode(e)
	return r, append([]byte(nil), e...), err
}

// Prove returns entry index with its inclusion proof against cp (which
// must be one of this log's checkpoints; zero means the latest).
func (l *Log) Prove(ctx context.Context, index uint64, cp Checkpoint) (Proven, error) {
	if cp.Raw == nil {
		cp = l.Checkpoint()
	}
	return FetchProven(ctx, l.reader, cp, index)
}

// Trace returns every record of trace id that a checkpoint covers, each
// with its inclusion proof against that checkpoint (the latest), in log
// order. Records integrated since are in the next checkpoint.
func (l *Log) Trace(ctx context.Context, id TraceID) ([]Proven, Checkpoint, error) {
	if id.IsZero() {
		return nil, Checkpoint{}, fmt.Errorf("audit: trace: zero trace id")
	}
	cp := l.Checkpoint()
	idx, mark, err := l.index.lookup(id)
	if err != nil {
		return nil, cp, err
	}
	var out []Proven
	for _, i := range idx {
		if i >= cp.Size {
			break
		}
		p, err := FetchProven(ctx, l.reader, cp, i)
		if err != nil {
			return nil, cp, err
		}
		out = append(out, p)
	}
	// Entries the indexer has not reached yet are read directly.
	for i := mark; i < cp.Size; i++ {
		p, err := FetchProven(ctx, l.reader, cp, i)
		if err != nil {
			return nil, cp, err
		}
		if p.Record.Trace == id {
			out = append(out, p)
		}
	}
	return out, cp, nil
}

// Commit adds to r a salted commitment to value named name, in place of
// the value (see Committer.Commit).
func (l *Log) Commit(r *Record, name string, value []byte) error {
	return l.committer.Commit(r, name, value)
}

// Disclosure opens one commitment of one record: the salt, with which
// the holder of the value can show it is the one committed to (Open).
type Disclosure struct {
	Index      uint64     `json:"index"`
	Commitment Commitment `json:"commitment"`
	Salt       [32]byte   `json:"salt"`
}

// Disclose returns the salt of the commitment named name in entry index.
// The caller decides who may ask (phase 2: the policy's audit action).
func (l *Log) Disclose(ctx context.Context, index uint64, name string) (Disclosure, error) {
	r, _, err := l.Entry(ctx, index)
	if err != nil {
		return Disclosure{}, err
	}
	c, ok := r.Commitment(name)
	if !ok {
		return Disclosure{}, fmt.Errorf("%w: entry %d has no commitment %q", ErrNotFound, index, name)
	}
	salt, err := l.committer.Salt(&r, name)
	if err != nil {
		return Disclosure{}, err
	}
	return Disclosure{Index: index, Commitment: c, Salt: salt}, nil
}

// Close stops the log: records already accepted are integrated and
// covered by a final checkpoint, then every goroutine ends. A second
// Close returns an error wrapping net.ErrClosed.
func (l *Log) Close() error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return fmt.Errorf("audit: close: %w", net.ErrClosed)
	}
	l.closed = true
	close(l.queue)
	l.closeMu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Integrate what Submit queued, then wait for the final checkpoint.
	l.drain.Wait()
	err := l.shutdown(ctx)
	if err == nil {
		err = l.observeCheckpoint(ctx)
	}
	if ierr := l.indexTo(ctx); err == nil {
		err = ierr
	}
	l.cancel()
	l.wg.Wait()
	l.hub.close()
	if cerr := l.index.close(); err == nil {
		err = cerr
	}
	if serr := l.storage.Close(); err == nil {
		err = serr
	}
	return err
}

// counters are the log's statistics (Stats).
type counters struct {
	appended, refused, dropped, failed, indexErrors, checkpoints, selfInconsistent atomic.Uint64
	cosigned, cosigRefused                                                         atomic.Uint64
}

// Stats are a log's counters since Open.
type Stats struct {
	Size        uint64 `json:"size"`         // entries in the latest checkpoint
	Appended    uint64 `json:"appended"`     // records acknowledged
	Refused     uint64 `json:"refused"`      // records refused as malformed
	Dropped     uint64 `json:"dropped"`      // records Submit found no room for
	Failed      uint64 `json:"failed"`       // appends the storage failed
	Followers   uint64 `json:"follow_drops"` // entries subscribers missed
	IndexErrors uint64 `json:"index_errors"`
	Checkpoints uint64 `json:"checkpoints"` // checkpoints seen
	// SelfInconsistent counts the log's own checkpoints that did not
	// verify or were not consistent with the one before: storage
	// corruption or tampering with the files.
	SelfInconsistent uint64 `json:"self_inconsistent"`
	Cosigned         uint64 `json:"cosignatures"`         // cosignatures accepted
	CosigRefused     uint64 `json:"cosignatures_refused"` // cosignatures refused
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	return Stats{
		Size:             l.Checkpoint().Size,
		Appended:         l.stats.appended.Load(),
		Refused:          l.stats.refused.Load(),
		Dropped:          l.stats.dropped.Load(),
		Failed:           l.stats.failed.Load(),
		Followers:        l.hub.dropped.Load(),
		IndexErrors:      l.stats.indexErrors.Load(),
		Checkpoints:      l.stats.checkpoints.Load(),
		SelfInconsistent: l.stats.selfInconsistent.Load(),
		Cosigned:         l.stats.cosigned.Load(),
		CosigRefused:     l.stats.cosigRefused.Load(),
	}
}

const historyFileName = "checkpoints"

// loadHistory reads the kept checkpoints and the current one, and checks
// that the current one is consistent with the last kept: the proof that
// the log continued where it stood before a restart.
func (l *Log) loadHistory(ctx context.Context) error {
	var hist []Checkpoint
	if l.stateDir != "" {
		b, err := os.ReadFile(filepath.Join(l.stateDir, historyFileName))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("audit: history: %w", err)
		}
		for _, raw := range splitHistory(b) {
			cp, err := ParseCheckpoint(raw, l.origin, l.verifier)
			if err != nil {
				l.stats.selfInconsistent.Add(1)
				l.logger.Warn("audit: kept checkpoint does not verify", "err", err)
				continue
			}
			hist = append(hist, cp)
		}
	}
	raw, err := l.reader.ReadCheckpoint(ctx)
	if err != nil {
		return fmt.Errorf("audit: checkpoint: %w", err)
	}
	cp, err := ParseCheckpoint(raw, l.origin, l.verifier)
	if err != nil {
		return fmt.Errorf("audit: own checkpoint: %w", err)
	}
	if n := len(hist); n > 0 && !bytes.Equal(hist[n-1].Raw, cp.Raw) {
		last := hist[n-1]
		if last.Size == cp.Size && last.Root == cp.Root {
			hist[n-1] = cp
		} else if err := CheckConsistency(ctx, l.reader, last, cp); err != nil {
			l.stats.selfInconsistent.Add(1)
			return fmt.Errorf("audit: log does not continue its last kept checkpoint: %w", err)
		} else {
			hist = append(hist, cp)
		}
	} else if n == 0 {
		hist = append(hist, cp)
	}
	l.mu.Lock()
	l.history = hist
	l.latest = cp
	l.mu.Unlock()
	return l.saveHistory()
}

// saveHistory writes the kept checkpoints: length-prefixed notes, replaced
// atomically (written, fsynced, renamed).
func (l *Log) saveHistory() error {
	if l.stateDir == "" {
		return nil
	}
	l.mu.Lock()
	var b []byte
	for _, cp := range l.history {
		b = fmt.Appendf(b, "%d\n", len(cp.Raw))
		b = append(b, cp.Raw...)
	}
	l.mu.Unlock()
	return writeFileAtomic(filepath.Join(l.stateDir, historyFileName), b)
}

func splitHistory(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		var n int
		if _, err := fmt.Sscanf(string(b[:i]), "%d", &n); err != nil || n <= 0 || n > MaxCheckpointSize || len(b) < i+1+n {
			break
		}
		out = append(out, b[i+1:i+1+n])
		b = b[i+1+n:]
	}
	return out
}

// writeFileAtomic replaces path with b durably.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("audit: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}
