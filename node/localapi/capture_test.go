package localapi_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/node/localapi"
)

// recorder keeps what the client writes, and says when the n-th write
// (the header is the first) has come.
type recorder struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	want   int
	reach  chan struct{}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes++
	if r.writes == r.want {
		close(r.reach)
	}
	return r.buf.Write(b)
}

func (r *recorder) wait(n int) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want, r.reach = n, make(chan struct{})
	if r.writes >= n {
		close(r.reach)
	}
	return r.reach
}

// pcapRecords checks that b is a pcap stream of whole records and returns
// their number.
func pcapRecords(t *testing.T, b []byte) int {
	t.Helper()
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b23c4d {
		t.Fatalf("not a pcap stream: % x", b[:min(len(b), 24)])
	}
	n := 0
	for b = b[24:]; len(b) > 0; n++ {
		if len(b) < 16 || len(b) < 16+int(binary.LittleEndian.Uint32(b[8:])) {
			t.Fatal("a record cut short")
		}
		b = b[16+int(binary.LittleEndian.Uint32(b[8:])):]
	}
	return n
}

// GET /v1/capture streams a pcap of the node's overlay traffic: until the
// client stops (whole records only), or for a duration (then with the
// counts in trailers); bad parameters are refused.
func TestCaptureEndpoint(t *testing.T) {
	n, _, sock := serve(t)
	peer := &node.Node{}
	if err := peer.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	for _, p := range [][2]*node.Node{{n, peer}, {peer, n}} {
		port, _ := p[1].UDPPort()
		if err := p[0].AddPeer(node.Peer{PublicKey: p[1].PublicKey(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}); err != nil {
			t.Fatal(err)
		}
	}
	pc, err := peer.ListenPacket("udp", ":9")
	if err != nil {
		t.Fatal(err)
	}
	u, err := n.Dial(context.Background(), "udp", netip.AddrPortFrom(peer.Addr(), 9).String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	c := &localapi.Client{Socket: sock}

	// Until the client stops: after ten datagrams were recorded.
	rec := &recorder{}
	started := rec.wait(1)
	ctx, cancel := context.WithCancel(context.Background())
	var st node.CaptureStats
	var capErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		st, capErr = c.Capture(ctx, rec, peer.Addr(), 0)
	}()
	select {
	case <-started:
	case <-done:
		t.Fatalf("capture ended before it began: %v", capErr)
	}
	got := make([]byte, 64)
	for i := 0; i < 10; {
		u.Write([]byte("datagram"))
		pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := pc.ReadFrom(got); err == nil {
			i++
		}
	}
	// The stream is flushed as packets come: the tenth record arrives.
	select {
	case <-rec.wait(11):
	case <-time.After(10 * time.Second):
		t.Fatal("ten records did not reach the client")
	}
	cancel()
	<-done
	if capErr != nil {
		t.Fatal(capErr)
	}
	var buf bytes.Buffer
	rec.mu.Lock()
	buf.Write(rec.buf.Bytes())
	rec.mu.Unlock()
	if recs := pcapRecords(t, buf.Bytes()); recs != int(st.Packets) || recs < 10 {
		t.Fatalf("%d records in the stream, client counted %d; want at least 10", recs, st.Packets)
	}

	// For a duration: the stream ends by itself, with the counts.
	buf.Reset()
	st, err = c.Capture(context.Background(), &buf, netip.Addr{}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if pcapRecords(t, buf.Bytes()) != int(st.Packets) || st.Dropped != 0 {
		t.Fatalf("duration capture: %+v", st)
	}

	for _, q := range []string{"peer=nope", "peer=2001:db8::1", "duration=-1s", "duration=48h", "duration=x", "port=1"} {
		code, _ := get(t, sock, "/v1/capture?"+q)
		if code != 400 {
			t.Errorf("capture?%s: HTTP %d, want 400", q, code)
		}
	}
	var le *localapi.Error
	if _, err := c.Capture(context.Background(), io.Discard, netip.MustParseAddr("2001:db8::1"), time.Second); !errors.As(err, &le) || le.Code != localapi.CodeBadRequest {
		t.Fatalf("client with a bad peer: %v", err)
	}
}
