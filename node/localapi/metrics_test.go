package localapi

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent6/agent6/overlay"
)

// docs/metrics.md describes every metric the collector serves and every
// reason the filter drops a packet for.
func TestMetricsDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	ch := make(chan *prometheus.Desc, 64)
	collector{}.Describe(ch)
	close(ch)
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	n := 0
	for d := range ch {
		m := name.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		n++
		if !strings.Contains(doc, "`"+m[1]) {
			t.Errorf("docs/metrics.md does not describe %s", m[1])
		}
	}
	if n < 10 {
		t.Errorf("only %d metrics described by the collector", n)
	}
	for r := overlay.DropReason(0); r.String() != "unknown"; r++ {
		if !strings.Contains(doc, "| `"+r.String()+"` |") {
			t.Errorf("docs/metrics.md does not describe the drop reason %s", r)
		}
	}
}
