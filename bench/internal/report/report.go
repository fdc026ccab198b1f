// Package report holds what the benchmark tools share when they write
// bench/RESULTS.md: facts about the machine and the run, and the writing of
// one tool's section without disturbing the others'.
package report

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Command describes how the running tool was invoked.
func Command() string {
	c := "`" + strings.Join(os.Args, " ") + "`"
	if os.Getenv("MAKELEVEL") != "" {
		return "`make bench`, which ran " + c
	}
	return c
}

// CPUModel returns the processor's model name.
func CPUModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// Kernel returns the kernel release.
func Kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// MemTotalGiB returns the machine's memory.
func MemTotalGiB() float64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return kb / (1 << 20)
		}
	}
	return 0
}

// LoadAvg returns the 1, 5 and 15 minute load averages: other work on a
// small machine shows in the figures.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

// Agent6Version names the tree agent6 was built from: the commit, if git
// knows it, and whether the tree had uncommitted changes.
func Agent6Version() string {
	rev, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "(this tree)"
	}
	v := "at commit " + strings.TrimSpace(string(rev))
	if dirty, err := exec.Command("git", "status", "--porcelain").Output(); err == nil && len(dirty) > 0 {
		v += " with uncommitted changes"
	}
	return v
}

// WriteSection replaces, in the file at path, the section that starts
// with the line title and runs to the next top-level heading, or appends
// it; the other tools' sections are kept.
func WriteSection(path, title, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	text := string(old)
	before, after := text, ""
	if i := strings.Index(text, title+"\n"); i >= 0 && (i == 0 || text[i-1] == '\n') {
		before, after = text[:i], text[i+len(title):]
		if j := strings.Index(after, "\n# "); j >= 0 {
			after = after[j+1:]
		} else {
			after = ""
		}
	}
	before = strings.TrimRight(before, "\n")
	if before != "" {
		before += "\n\n"
	}
	if after != "" {
		after = "\n" + after
	}
	return os.WriteFile(path, []byte(before+strings.TrimRight(section, "\n")+"\n"+after), 0o644)
}
