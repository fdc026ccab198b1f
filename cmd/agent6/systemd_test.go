package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent6/agent6/node/config"
)

// The systemd unit agrees with the binary and the defaults: Type=notify
// (up tells systemd READY=1), only CAP_NET_ADMIN, an ExecStart that up
// accepts, and the runtime and state directories where the LocalAPI
// socket and state_dir are by default. systemd-analyze verifies it where
// installed.
func TestSystemdUnit(t *testing.T) {
	f, err := os.Open("../../examples/systemd/agent6.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unit := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			unit[k] = append(unit[k], v)
		}
	}
	one := func(k string) string {
		if len(unit[k]) != 1 {
			t.Fatalf("agent6.service: %s set %d times", k, len(unit[k]))
		}
		return unit[k][0]
	}
	for k, want := range map[string]string{
		"Type": "notify", "CapabilityBoundingSet": "CAP_NET_ADMIN", "AmbientCapabilities": "CAP_NET_ADMIN",
		"RuntimeDirectory": filepath.Base(filepath.Dir(config.DefaultLocalAPI)), "StateDirectory": filepath.Base(config.DefaultStateDir),
		"User": "agent6", "NoNewPrivileges": "yes", "DeviceAllow": "/dev/net/tun rw",
	} {
		if got := one(k); got != want {
			t.Errorf("agent6.service: %s=%s, want %s", k, got, want)
		}
	}
	if filepath.Dir(config.DefaultLocalAPI) != "/run/agent6" || filepath.Dir(config.DefaultStateDir) != "/var/lib" {
		t.Errorf("defaults %s, %s are not under /run and /var/lib, where systemd makes the directories", config.DefaultLocalAPI, config.DefaultStateDir)
	}
	exec0 := strings.Fields(one("ExecStart"))
	if len(exec0) < 2 || exec0[0] != "/usr/local/bin/agent6" || exec0[1] != "up" {
		t.Fatalf("ExecStart=%s", one("ExecStart"))
	}
	if err := flagsOf("up").Parse(exec0[2:]); err != nil {
		t.Errorf("ExecStart=%s: agent6 up refuses its flags: %v", one("ExecStart"), err)
	}

	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed; unit not verified")
		return
	}
	bin := buildAgent6(t)
	data, _ := os.ReadFile("../../examples/systemd/agent6.service")
	p := filepath.Join(t.TempDir(), "agent6.service")
	os.WriteFile(p, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/agent6", bin)), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", p).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
