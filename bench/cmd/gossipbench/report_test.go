package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWriteSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "RESULTS.md")
	const netbench = "# Agent6 network benchmark\n\n| a | b |\n\n## Runs\n\nx\n"
	for _, tc := range []struct {
		name, before, section, want string
	}{
		{"new file", "", sectionTitle + "\n\none\n",
			sectionTitle + "\n\none\n"},
		{"appended", netbench, sectionTitle + "\n\none\n",
			netbench + "\n" + sectionTitle + "\n\none\n"},
		{"replaced", netbench + "\n" + sectionTitle + "\n\nold\n\n## Removal\n\nold\n", sectionTitle + "\n\nnew\n",
			netbench + "\n" + sectionTitle + "\n\nnew\n"},
		{"replaced, later section kept", sectionTitle + "\n\nold\n\n" + netbench, sectionTitle + "\n\nnew\n",
			sectionTitle + "\n\nnew\n\n" + netbench},
	} {
		if tc.before == "" {
			os.Remove(path)
		} else if err := os.WriteFile(path, []byte(tc.before), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := writeSection(path, tc.section); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != tc.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}

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
