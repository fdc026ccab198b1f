package node_test

import (
	"reflect"
	"testing"

	"github.com/agent6/agent6/node"
)

// Plus adds every counter: one added to HandshakeStatus and forgotten in
// Plus fails here.
func TestHandshakeStatusPlus(t *testing.T) {
	var a, b node.HandshakeStatus
	va, vb := reflect.ValueOf(&a).Elem(), reflect.ValueOf(&b).Elem()
	for i := range va.NumField() {
		va.Field(i).SetUint(uint64(i + 1))
		vb.Field(i).SetUint(uint64(100 * (i + 1)))
	}
	sum := reflect.ValueOf(a.Plus(b))
	for i := range sum.NumField() {
		if got, want := sum.Field(i).Uint(), uint64(101*(i+1)); got != want {
			t.Errorf("%s: %d, want %d", sum.Type().Field(i).Name, got, want)
		}
	}
}
