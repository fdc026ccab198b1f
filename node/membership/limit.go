package membership

// Limits on admission frames from the network, checked (internal/limit)
// before any copy, queue or signature check. A peer sends a handful per
// join (a HELLO a second while joining, one per 2 s when asked, an ACK per
// HELLO), so 10 a second per source leaves room; the total bounds the
// signature checks a flood from many (spoofed) sources can cause to 2,000
// a second, about a tenth of a core. Peer frames, from admitted peers
// inside WireGuard, have their own allowance (delegation.go).
const (
	ctrlPerSource  = 10
	ctrlBurst      = 20
	ctrlTotal      = 2000
	ctrlTotalBurst = 4000
	maxSources     = 4096
)
