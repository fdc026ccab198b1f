package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// version describes the build from its embedded build information: the
// module version ("(devel)" for a build from a checkout), the VCS
// revision and time when the build recorded them (go build does, in a
// git checkout), and the Go version.
func version(bi *debug.BuildInfo, ok bool) string {
	if !ok {
		return "agent6 (no build information)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	var b strings.Builder
	fmt.Fprintf(&b, "agent6 %s", v)
	if rev := settings["vcs.revision"]; rev != "" {
		fmt.Fprintf(&b, " revision %s", rev)
		if t := settings["vcs.time"]; t != "" {
			fmt.Fprintf(&b, " (%s)", t)
		}
		if settings["vcs.modified"] == "true" {
			b.WriteString(" with local changes")
		}
	} else {
		b.WriteString(" revision unknown (built without VCS information)")
	}
	fmt.Fprintf(&b, ", module %s, %s", bi.Main.Path, bi.GoVersion)
	return b.String()
}

func runVersion(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	fmt.Fprintln(stdout, version(debug.ReadBuildInfo()))
	return nil
}
