package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestLocalAPIGroupsAndStateDir(t *testing.T) {
	dir, _ := setup(t)
	c, err := Load(write(t, dir, "key: agent.key\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.LocalAPIGID != -1 || c.AdminGID != -1 || c.StateDir != DefaultStateDir || c.Node(nil).Dir != DefaultStateDir {
		t.Fatalf("defaults: socket group %d, admin group %d, state dir %q", c.LocalAPIGID, c.AdminGID, c.StateDir)
	}
	// A group by name ("root" is group 0 everywhere) or by number, which
	// need not have a name; a relative state_dir is relative to the file.
	c, err = Load(write(t, dir, "key: agent.key\nlocalapi_group: root\nlocalapi_admin_group: \"4242\"\nstate_dir: state\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.LocalAPIGID != 0 || c.AdminGID != 4242 || c.StateDir != filepath.Join(dir, "state") {
		t.Fatalf("socket group %d, admin group %d, state dir %q", c.LocalAPIGID, c.AdminGID, c.StateDir)
	}
	for body, field := range map[string]string{
		"localapi_group: no-such-group-a6\n":       "localapi_group",
		"localapi_admin_group: no-such-group-a6\n": "localapi_admin_group",
		"localapi_admin_group: \"-1\"\n":           "localapi_admin_group",
		"state_dir: \"\"\n":                        "state_dir",
	} {
		_, err := Load(write(t, dir, "key: agent.key\n"+body))
		var cerr *Error
		if !errors.As(err, &cerr) || cerr.Field != field || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: %v, want an error naming %s", body, err, field)
		}
	}
}
