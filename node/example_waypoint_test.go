package node_test

import (
	"bytes"
	"context"
	"log"

	"github.com/agent6/agent6/node"
	"github.com/agent6/agent6/overlay"
)

// dlp is an inspection service: it looks at every packet of the flows to
// port 443 and drops a flow whose payload carries a marker; other flows
// pass without a look.
type dlp struct{}

func (dlp) InspectFlow(f overlay.TransitFlow) overlay.Verdict {
	if f.Flow.Dst.Port() == 443 {
		return overlay.VerdictInspect
	}
	return overlay.VerdictPass
}

func (dlp) InspectPacket(f overlay.TransitFlow, pkt []byte) overlay.Verdict {
	if bytes.Contains(pkt, []byte("CONFIDENTIAL")) {
		return overlay.VerdictDrop
	}
	return overlay.VerdictInspect
}

// A node that serves as a waypoint with an inspection hook, and records
// the signed receipt of each flow it forwarded.
func ExampleWaypoint() {
	n := &node.Node{Waypoint: &node.Waypoint{
		Inspector: dlp{},
		OnReceipt: func(r overlay.Receipt) {
			log.Printf("forwarded %s → %s: %d packets, verdict %s", r.Flow.Src, r.Flow.Dst, r.Packets+r.RevPackets, r.Verdict)
		},
	}}
	if err := n.Up(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer n.Close()
	// Peers (or membership) as for any node; the sources' Via names
	// this node as a waypoint.
}
