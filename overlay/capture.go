package overlay

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"time"
)

// Packet capture: a copy of every plaintext packet as it enters WireGuard
// (what Read hands it, after the filter: SRv6 encapsulation included) and
// as it leaves it (what Write receives, before the filter), written as a
// pcap file (LINKTYPE_RAW, nanosecond timestamps) that tcpdump, tshark and
// Wireshark read.
//
// The format is written here rather than with a library: it is a 24-byte
// file header and a 16-byte header per packet, and the libraries that
// write it (gopacket's pcapgo) would bring a large dependency for forty
// lines.

const (
	pcapMagicNanos = 0xa1b23c4d // pcap with nanosecond timestamps
	linktypeRaw    = 101        // LINKTYPE_RAW: the packet starts with its IPv4 or IPv6 header
	pcapSnaplen    = 65535

	// captureQueue bounds the packets, and captureQueueBytes their bytes,
	// waiting for a capture's writer: beyond, packets are dropped and
	// counted, and the data path never waits.
	captureQueue      = 4096
	captureQueueBytes = 8 << 20
)

// CaptureConfig selects what a capture records.
type CaptureConfig struct {
	// Peer, if set, keeps only the packets to or from this address, as
	// outer or inner (encapsulated) source or destination.
	Peer netip.Addr
}

// CaptureStats counts what a capture recorded.
type CaptureStats struct {
	Packets uint64 `json:"packets"` // written
	Bytes   uint64 `json:"bytes"`   // of packets written
	Dropped uint64 `json:"dropped"` // not written: the writer fell behind
}

// captured is one packet copy on its way to a capture's writer.
type captured struct {
	at  time.Time
	pkt []byte
}

// captureSink is one running capture.
type captureSink struct {
	peer    [16]byte
	all     bool
	ch      chan captured
	queued  atomic.Int64 // bytes in ch
	dropped atomic.Uint64
}

// ErrCaptureWrite wraps the error of a capture's writer.
var ErrCaptureWrite = errors.New("overlay: capture: write")

// Capture writes a pcap stream of the packets crossing between the filter
// and WireGuard, both directions, to w until ctx is done or w fails. It
// blocks meanwhile; the stream's header is written once packets are being
// recorded. The data path never waits for w: when w falls behind,
// packets are dropped and counted. Several captures may run at once. Safe
// for concurrent use.
func (f *Filter) Capture(ctx context.Context, w io.Writer, cfg CaptureConfig) (st CaptureStats, err error) {
	if cfg.Peer.IsValid() && !cfg.Peer.Is6() {
		return st, fmt.Errorf("overlay: capture: peer %s is not IPv6", cfg.Peer)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	s := &captureSink{peer: cfg.Peer.As16(), all: !cfg.Peer.IsValid(), ch: make(chan captured, captureQueue)}
	f.addCapture(s)
	defer func() {
		f.removeCapture(s)
		st.Dropped = s.dropped.Load()
	}()
	// The header goes out once the capture runs: a reader that has it
	// knows that every packet from then on is recorded.
	writePcapHeader(bw)
	if err := bw.Flush(); err != nil {
		return st, fmt.Errorf("%w: %w", ErrCaptureWrite, err)
	}
	write := func(c captured) error {
		s.queued.Add(-int64(len(c.pkt)))
		err := writePcapRecord(bw, c.at, c.pkt)
		st.Packets++
		st.Bytes += uint64(len(c.pkt))
		return err
	}
	// finish writes what was captured before the end, then flushes.
	finish := func() (CaptureStats, error) {
		f.removeCapture(s)
		for {
			select {
			case c := <-s.ch:
				if err := write(c); err != nil {
					return st, fmt.Errorf("%w: %w", ErrCaptureWrite, err)
				}
			default:
				if err := bw.Flush(); err != nil {
					return st, fmt.Errorf("%w: %w", ErrCaptureWrite, err)
				}
				return st, nil
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return finish()
		case <-f.done:
			return finish()
		case c := <-s.ch:
			if err := write(c); err != nil {
				return st, fmt.Errorf("%w: %w", ErrCaptureWrite, err)
			}
			// Write what else is queued, then flush: a stream's reader
			// sees packets as they come, and a burst costs one write.
			for more := true; more; {
				select {
				case c := <-s.ch:
					if err := write(c); err != nil {
						return st, fmt.Errorf("%w: %w", ErrCaptureWrite, err)
					}
				default:
					more = false
				}
			}
			if err := bw.Flush(); err != nil {
				return st, fmt.Errorf("%w: %w", ErrCaptureWrite, err)
			}
		}
	}
}

// writePcapHeader writes a pcap file header: nanosecond timestamps,
// LINKTYPE_RAW, little-endian.
func writePcapHeader(w io.Writer) error {
	var hdr [24]byte
	binary.LittleEndian.PutUint32(hdr[0:], pcapMagicNanos)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], pcapSnaplen)
	binary.LittleEndian.PutUint32(hdr[20:], linktypeRaw)
	_, err := w.Write(hdr[:])
	return err
}

// writePcapRecord writes one packet, whole, with its time.
func writePcapRecord(w io.Writer, at time.Time, pkt []byte) error {
	var rec [16]byte
	binary.LittleEndian.PutUint32(rec[0:], uint32(at.Unix()))
	binary.LittleEndian.PutUint32(rec[4:], uint32(at.Nanosecond()))
	binary.LittleEndian.PutUint32(rec[8:], uint32(len(pkt)))
	binary.LittleEndian.PutUint32(rec[12:], uint32(len(pkt)))
	if _, err := w.Write(rec[:]); err != nil {
		return err
	}
	_, err := w.Write(pkt)
	return err
}

func (f *Filter) addCapture(s *captureSink) {
	f.captureMu.Lock()
	defer f.captureMu.Unlock()
	var next []*captureSink
	if cur := f.captures.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, s)
	f.captures.Store(&next)
}

func (f *Filter) removeCapture(s *captureSink) {
	f.captureMu.Lock()
	defer f.captureMu.Unlock()
	cur := f.captures.Load()
	if cur == nil {
		return
	}
	var next []*captureSink
	for _, o := range *cur {
		if o != s {
			next = append(next, o)
		}
	}
	if len(next) == 0 {
		f.captures.Store(nil)
		return
	}
	f.captures.Store(&next)
}

// capture offers one packet to each running capture.
func capture(sinks []*captureSink, at time.Time, pkt []byte) {
	for _, s := range sinks {
		if !s.all && !s.matches(pkt) {
			continue
		}
		if s.queued.Load()+int64(len(pkt)) > captureQueueBytes {
			s.dropped.Add(1)
			continue
		}
		c := captured{at: at, pkt: append([]byte(nil), pkt...)}
		select {
		case s.ch <- c:
			s.queued.Add(int64(len(pkt)))
		default:
			s.dropped.Add(1)
		}
	}
}

// matches reports whether pkt is to or from the sink's peer: its source
// or destination, or those of the packet it encapsulates.
func (s *captureSink) matches(pkt []byte) bool {
	if len(pkt) < ipv6HeaderLen {
		return false
	}
	if string(pkt[8:24]) == string(s.peer[:]) || string(pkt[24:40]) == string(s.peer[:]) {
		return true
	}
	if isSRv6(pkt) {
		h := ipv6HeaderLen + 8*(int(pkt[ipv6HeaderLen+1])+1)
		if h+ipv6HeaderLen <= len(pkt) {
			in := pkt[h:]
			return string(in[8:24]) == string(s.peer[:]) || string(in[24:40]) == string(s.peer[:])
		}
	}
	return false
}

// captureOut records the packets Read returns.
func (f *Filter) captureOut(sinks []*captureSink, bufs [][]byte, sizes []int, n, offset int) {
	now := time.Now()
	for i := range n {
		if sizes[i] > 0 {
			capture(sinks, now, bufs[i][offset:offset+sizes[i]])
		}
	}
}

// captureIn records the packets Write receives.
func (f *Filter) captureIn(sinks []*captureSink, bufs [][]byte, offset int) {
	now := time.Now()
	for _, b := range bufs {
		if len(b) > offset {
			capture(sinks, now, b[offset:])
		}
	}
}
