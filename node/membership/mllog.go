package membership

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// mlLog maps memberlist's log lines ("[ERR] memberlist: ...") to the
// node's levels and rate-limits them. While a peer is unreachable
// memberlist logs an [ERR] line for every failed probe, gossip and
// push/pull: for this node that is a peer it cannot reach, not an error
// of its own, so such lines become warnings; its other [ERR] lines stay
// errors, [WARN] and [INFO] keep their level and the rest is debug. Each
// kind of line (the message up to its first address or number) is logged
// at most once every mlLogEvery at info and above, the next one saying
// how many were suppressed in between.
type mlLog struct {
	log *slog.Logger

	mu    sync.Mutex // guards kinds
	kinds map[string]*mlKind
}

type mlKind struct {
	last       time.Time // when one was last logged
	suppressed int       // since then
}

const (
	mlLogEvery = 10 * time.Second
	// mlMaxKinds bounds the table; past it, it starts afresh.
	mlMaxKinds = 256
)

func newMLLog(l *slog.Logger) *mlLog { return &mlLog{log: l, kinds: make(map[string]*mlKind)} }

// unreachable are the fragments of memberlist's [ERR] lines that report a
// peer this node cannot reach or that broke off a connection.
var unreachable = []string{
	"Failed to send", "Failed fallback TCP ping", "Push/Pull with", "Failed to push local state",
	"Failed to read remote state", "failed to receive", "Failed to forward ack", "i/o timeout",
	"connection refused", "connection reset", "no route to host", "network is unreachable", "broken pipe", "EOF",
}

// level is the node's level for a memberlist line, and its message
// without the level tag.
func level(line string) (slog.Level, string) {
	tag, msg, ok := strings.Cut(line, "] ")
	if !ok || !strings.HasPrefix(tag, "[") {
		return slog.LevelDebug, line
	}
	switch tag[1:] {
	case "ERR":
		for _, u := range unreachable {
			if strings.Contains(msg, u) {
				return slog.LevelWarn, msg
			}
		}
		return slog.LevelError, msg
	case "WARN":
		return slog.LevelWarn, msg
	case "INFO":
		return slog.LevelInfo, msg
	}
	return slog.LevelDebug, msg
}

// kindOf is a message's kind: its text up to the first digit or bracket,
// where addresses, names and numbers begin.
func kindOf(msg string) string {
	if i := strings.IndexAny(msg, "0123456789[("); i >= 0 {
		return msg[:i]
	}
	return msg
}

func (l *mlLog) write(line string) {
	lvl, msg := level(line)
	ctx := context.Background()
	if !l.log.Enabled(ctx, lvl) {
		return
	}
	if lvl < slog.LevelInfo {
		l.log.Log(ctx, lvl, msg)
		return
	}
	now := time.Now()
	kind := kindOf(msg)
	l.mu.Lock()
	k := l.kinds[kind]
	if k == nil {
		if len(l.kinds) >= mlMaxKinds {
			clear(l.kinds)
		}
		k = &mlKind{}
		l.kinds[kind] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < mlLogEvery {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := k.suppressed
	k.last, k.suppressed = now, 0
	l.mu.Unlock()
	if suppressed > 0 {
		l.log.Log(ctx, lvl, msg, "suppressed", suppressed)
	} else {
		l.log.Log(ctx, lvl, msg)
	}
}
