package report

import (
	"os"
	"path/filepath"
	"testing"
)

const sectionTitle = "# Agent6 gossip benchmark"

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
		if err := WriteSection(path, sectionTitle, tc.section); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != tc.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}
