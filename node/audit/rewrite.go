package audit

import (
	"context"
	"fmt"

	"github.com/transparency-dev/tessera/api/layout"
)

// Rewrite is a test hook: it opens a log with cfg (its Storage must be
// fresh) holding the first keep entries of the log src reads, then extra,
// signed by the same key under the same origin: what a node that truncated
// its log and appended again would serve. It returns once a checkpoint
// covers it all. Tests use it to show that witnesses catch a rewritten
// log; nothing in a running node calls it.
func Rewrite(ctx context.Context, cfg Config, src Fetcher, keep uint64, extra []Record) (*Log, error) {
	l, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Log, error) {
		l.Close()
		return nil, err
	}
	if cp := l.Checkpoint(); cp.Size != 0 {
		return fail(fmt.Errorf("%w: Rewrite needs a fresh storage, it has %d entries", ErrConfig, cp.Size))
	}
	for bi := uint64(0); bi*layout.EntryBundleWidth < keep; bi++ {
		entries, err := bundle(ctx, src, bi, keep)
		if err != nil {
			return fail(err)
		}
		for _, e := range entries {
			if _, err := l.AppendEncoded(ctx, e); err != nil {
				return fail(err)
			}
		}
	}
	last := keep
	for _, r := range extra {
		if last, err = l.Append(ctx, r); err != nil {
			return fail(err)
		}
		last++
	}
	if last > 0 {
		if _, err := l.AwaitCheckpoint(ctx, last-1); err != nil {
			return fail(err)
		}
	}
	return l, nil
}
