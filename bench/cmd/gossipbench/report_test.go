package main

import (
	"slices"
	"testing"
)

func TestParseSizes(t *testing.T) {
	got, err := parseSizes("200, 50,100,50,400", 300)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{50, 100, 200}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"", "1", "x", "500"} {
		if _, err := parseSizes(bad, 300); err == nil {
			t.Errorf("parseSizes(%q) did not fail", bad)
		}
	}
}
