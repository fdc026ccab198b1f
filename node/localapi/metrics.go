package localapi

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric descriptions. Every value is read from the node when scraped
// (node.Status and friends); nothing is kept here.
var (
	descInfo = prometheus.NewDesc("agent6_info",
		"This node's identity; the value is always 1.",
		[]string{"address", "public_key", "spiffe_id", "trust_domain", "mode"}, nil)
	descPeers = prometheus.NewDesc("agent6_peers",
		"WireGuard peers configured on this node.", nil, nil)
	descPackets = prometheus.NewDesc("agent6_filter_packets_total",
		"Packets the filter accepted, by direction (in: from the overlay, out: to it).", []string{"direction"}, nil)
	descBytes = prometheus.NewDesc("agent6_filter_bytes_total",
		"Bytes the filter accepted, by direction.", []string{"direction"}, nil)
	descDrops = prometheus.NewDesc("agent6_filter_drops_total",
		"Packets the filter dropped, by reason.", []string{"reason"}, nil)
	descUntracked = prometheus.NewDesc("agent6_filter_untracked_packets_total",
		"Packets passed without a flow entry because the flow table was full.", nil, nil)
	descFlows = prometheus.NewDesc("agent6_filter_flows",
		"Flows in the filter's flow table.", nil, nil)
	descForwarded = prometheus.NewDesc("agent6_waypoint_forwarded_packets_total",
		"Packets this node forwarded as a waypoint (SRv6), each checked and stamped.", nil, nil)
	descForwardedBytes = prometheus.NewDesc("agent6_waypoint_forwarded_bytes_total",
		"Bytes of the packets this node forwarded as a waypoint.", nil, nil)
	descTransitFlows = prometheus.NewDesc("agent6_waypoint_flows",
		"Flows this node forwards as a waypoint now.", nil, nil)
	descICMP = prometheus.NewDesc("agent6_filter_icmp_errors_total",
		"ICMPv6 errors the filter made for the local stack (Packet Too Big, administratively prohibited), by result (sent; limited: not sent, over the rate limit or with the queue to the stack full).", []string{"result"}, nil)
	descCrossings = prometheus.NewDesc("agent6_wireguard_handshake_crossings_total",
		"Handshakes this node and a peer started at once, by outcome (answered: the peer's held until ours was answered, then dropped; released: the peer's held, then delivered when ours was not answered; superseded: ours held while WireGuard had the peer's to answer, then dropped when it answered; sent_late: ours held, then sent when it did not).", []string{"outcome"}, nil)
	descRedelivered = prometheus.NewDesc("agent6_wireguard_handshake_redelivered_total",
		"Handshake initiations that arrived before their peer was admitted, handed to WireGuard again once it was.", nil, nil)
	descNetstackDrops = prometheus.NewDesc("agent6_netstack_udp_receive_buffer_drops_total",
		"Embedded mode: datagrams the userspace stack dropped because the receiving socket's buffer was full.", nil, nil)
	descNetstackUnknownPort = prometheus.NewDesc("agent6_netstack_udp_unknown_port_total",
		"Embedded mode: datagrams to a port no socket of the userspace stack listens on.", nil, nil)
	descNetstackRetransmits = prometheus.NewDesc("agent6_netstack_tcp_retransmits_total",
		"Embedded mode: TCP segments the userspace stack sent again.", nil, nil)
	descMembers = prometheus.NewDesc("agent6_membership_members",
		"Agents admitted through membership, not counting this node.", nil, nil)
	descJoined = prometheus.NewDesc("agent6_membership_joined",
		"1 once the node has joined its cluster, else 0.", nil, nil)
	descRefusals = prometheus.NewDesc("agent6_membership_refusals_total",
		"Agent records and revocations membership refused, by reason.", []string{"reason"}, nil)
	descCatchUps = prometheus.NewDesc("agent6_membership_catch_ups_total",
		"Push/pulls repairing what gossip lost: with an admitted peer whose alive message never arrived, or with a peer declared dead a second before.", nil, nil)
	descOverruled = prometheus.NewDesc("agent6_membership_deaths_overruled_total",
		"Peers memberlist declared dead that were kept because WireGuard kept receiving from them.", nil, nil)
	descBadRequests = prometheus.NewDesc("agent6_localapi_bad_requests_total",
		"LocalAPI requests refused as malformed (bad path, method, parameter or body).", nil, nil)
	descForbidden = prometheus.NewDesc("agent6_localapi_forbidden_total",
		"LocalAPI requests refused for their caller (403): a write the caller's uid or groups do not allow.", nil, nil)
	descDNS = prometheus.NewDesc("agent6_dns_queries_total",
		"DNS queries answered, by result (answered, nodata, nxdomain, refused, malformed, not_implemented).", []string{"result"}, nil)
)

// collector reads the node's counters on every scrape.
type collector struct{ s *Server }

var _ prometheus.Collector = collector{}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descPeers, descPackets, descBytes, descDrops, descUntracked,
		descFlows, descForwarded, descForwardedBytes, descTransitFlows, descICMP, descCrossings, descRedelivered, descNetstackDrops, descNetstackUnknownPort, descNetstackRetransmits, descMembers, descJoined, descRefusals, descCatchUps, descOverruled, descBadRequests, descForbidden, descDNS} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(descBadRequests, c.s.BadRequests())
	counter(descForbidden, c.s.Forbidden())
	if st, ok := c.s.Node.DNSStats(); ok {
		for result, v := range st.ByResult() {
			counter(descDNS, v, result)
		}
	}
	st, err := c.s.Node.Status()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descInfo, err)
		return
	}
	id, td := "", ""
	if m := st.Membership; m != nil {
		id, td = m.SPIFFEID, m.TrustDomain
	}
	gauge(descInfo, 1, st.Addr.String(), st.PublicKey.String(), id, td, st.Mode)
	gauge(descPeers, float64(len(st.Peers)))
	f := st.Filter
	counter(descPackets, f.InPackets, "in")
	counter(descPackets, f.OutPackets, "out")
	counter(descBytes, f.InBytes, "in")
	counter(descBytes, f.OutBytes, "out")
	counter(descUntracked, f.Untracked)
	gauge(descFlows, float64(f.ActiveFlows))
	for reason, v := range f.Drops {
		counter(descDrops, v, reason)
	}
	counter(descForwarded, f.Forwarded)
	counter(descForwardedBytes, f.ForwardedBytes)
	gauge(descTransitFlows, float64(f.TransitFlows))
	counter(descICMP, f.ICMPErrors, "sent")
	counter(descICMP, f.ICMPLimited, "limited")
	counter(descCrossings, st.Handshakes.CrossAnswered, "answered")
	counter(descCrossings, st.Handshakes.CrossReleased, "released")
	counter(descCrossings, st.Handshakes.CrossSuperseded, "superseded")
	counter(descCrossings, st.Handshakes.CrossSentLate, "sent_late")
	counter(descRedelivered, st.Handshakes.Redelivered)
	if ns := st.Netstack; ns != nil {
		counter(descNetstackDrops, ns.UDPReceiveBufferDrops)
		counter(descNetstackUnknownPort, ns.UDPUnknownPort)
		counter(descNetstackRetransmits, ns.TCPRetransmits)
	}
	if m := st.Membership; m != nil {
		gauge(descMembers, float64(m.Members))
		joined := 0.0
		if m.Joined {
			joined = 1
		}
		gauge(descJoined, joined)
		counter(descCatchUps, m.CatchUps)
		counter(descOverruled, m.DeathsOverruled)
		for reason, v := range m.Refused {
			counter(descRefusals, v, reason)
		}
	}
}

// metricsHandler serves GET /metrics from a registry of its own: this
// node's collector plus the Go runtime's and the process's.
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{s}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}
	if s.Logger != nil {
		opts.ErrorLog = errorLogger{s}
	}
	return promhttp.HandlerFor(reg, opts)
}

// errorLogger is promhttp's error log on the server's slog.Logger.
type errorLogger struct{ s *Server }

func (l errorLogger) Println(v ...any) {
	l.s.Logger.Warn("localapi: metrics", "err", fmt.Sprint(v...))
}
