package gossip

import (
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-metrics"
)

// Events counts memberlist's state changes and probes, summed over every
// instance in the process: each instance that marks a node suspect counts
// one suspicion, so one suspicion seen by the whole cluster counts n−1.
type Events struct {
	Alive   uint64 `json:"alive"`   // a node learned, or its incarnation raised (refutations)
	Suspect uint64 `json:"suspect"` // a node marked suspect
	Dead    uint64 `json:"dead"`    // a node marked dead or left
	// DegradedProbes are probe rounds slowed by a poor local health score
	// (Lifeguard: the instance thinks it is the slow one).
	DegradedProbes uint64 `json:"degraded_probes"`
	TCPConnects    uint64 `json:"tcp_connects"` // push/pulls, joins and fallback pings
}

func (e Events) sub(o Events) Events {
	return Events{e.Alive - o.Alive, e.Suspect - o.Suspect, e.Dead - o.Dead, e.DegradedProbes - o.DegradedProbes, e.TCPConnects - o.TCPConnects}
}

// eventSink is a go-metrics sink that keeps only the counters Events holds.
// memberlist reports to go-metrics' global sink, so one sink serves every
// instance in the process.
type eventSink struct {
	alive, suspect, dead, degraded, connects atomic.Uint64

	// Samples of memberlist.queue.broadcasts, each instance's broadcast
	// queue depth (every QueueCheckInterval), since queued last read them.
	mu     sync.Mutex
	qSum   float64
	qCount int
}

// queued returns the sum and the number of the broadcast-queue samples
// taken since its last call.
func queued() (sum float64, count int) {
	sink.mu.Lock()
	defer sink.mu.Unlock()
	sum, count = sink.qSum, sink.qCount
	sink.qSum, sink.qCount = 0, 0
	return sum, count
}

var _ metrics.MetricSink = (*eventSink)(nil)

var (
	sinkOnce sync.Once
	sink     = new(eventSink)
)

// events installs the sink as go-metrics' global sink, once, and returns
// the counts so far.
func events() Events {
	sinkOnce.Do(func() {
		c := metrics.DefaultConfig("")
		c.EnableHostname = false
		c.EnableRuntimeMetrics = false
		metrics.NewGlobal(c, sink)
	})
	return Events{sink.alive.Load(), sink.suspect.Load(), sink.dead.Load(), sink.degraded.Load(), sink.connects.Load()}
}

func (s *eventSink) IncrCounter(key []string, val float32) {
	if len(key) != 3 || key[0] != "memberlist" {
		return
	}
	var c *atomic.Uint64
	switch key[1] + "." + key[2] {
	case "msg.alive":
		c = &s.alive
	case "msg.suspect":
		c = &s.suspect
	case "msg.dead":
		c = &s.dead
	case "degraded.probe":
		c = &s.degraded
	case "tcp.connect":
		c = &s.connects
	default:
		return
	}
	c.Add(uint64(val))
}

func (s *eventSink) IncrCounterWithLabels(key []string, val float32, _ []metrics.Label) {
	s.IncrCounter(key, val)
}

func (*eventSink) SetGauge([]string, float32)                            {}
func (*eventSink) SetGaugeWithLabels([]string, float32, []metrics.Label) {}
func (*eventSink) EmitKey([]string, float32)                             {}

func (s *eventSink) AddSample(key []string, val float32) {
	if len(key) == 3 && key[0] == "memberlist" && key[1] == "queue" && key[2] == "broadcasts" {
		s.mu.Lock()
		s.qSum += float64(val)
		s.qCount++
		s.mu.Unlock()
	}
}

func (s *eventSink) AddSampleWithLabels(key []string, val float32, _ []metrics.Label) {
	s.AddSample(key, val)
}
