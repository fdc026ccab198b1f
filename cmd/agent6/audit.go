package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/audit"
)

var auditCommands = map[string]command{
	"vkey":   {summary: "print the node's audit log verifier key (or, with --witness, its cosigner key)", run: runAuditVkey},
	"verify": {summary: "check an audit log directory end to end, offline", run: runAuditVerify},
}

func runAudit(args []string, stdout io.Writer) error {
	return dispatch("audit", auditCommands, args, stdout)
}

func runAuditVkey(args []string, stdout io.Writer) error {
	fs := newFlags("audit vkey", "--key FILE [--trust-domain TD] [--witness]")
	keyFile := fs.String("key", "", "agent key file (PKCS#8 Ed25519 PEM)")
	td := fs.String("trust-domain", "", "the node's trust domain (default: none, "+audit.NoTrustDomain+")")
	witness := fs.Bool("witness", false, "print the node's cosigner key as a witness instead")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *keyFile == "" {
		return fmt.Errorf("%w: --key is required", errUsage)
	}
	k, err := identity.LoadPrivateKey(*keyFile)
	if err != nil {
		return err
	}
	addr, err := k.Public().Addr()
	if err != nil {
		return err
	}
	var vkey string
	if *witness {
		name, err := audit.WitnessName(*td, addr)
		if err != nil {
			return fmt.Errorf("--trust-domain: %w", err)
		}
		vkey, err = audit.CosignerKey(name, k.Public())
		if err != nil {
			return err
		}
	} else if vkey, err = audit.NodeVerifierKey(k.Public(), *td); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}

func runAuditVerify(args []string, stdout io.Writer) error {
	fs := newFlags("audit verify", "--dir DIR [--vkey VKEY] [--json]")
	dir := fs.String("dir", "", "the log's directory (the node's state directory's audit/)")
	vkey := fs.String("vkey", "", "the log's verifier key, from `agent6 audit vkey` (default: the one the log keeps in its directory)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, used, err := audit.VerifyDir(ctx, *dir, *vkey)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			audit.Report
			VerifierKey string `json:"verifier_key"`
			KeyFromDir  bool   `json:"key_from_dir"`
		}{rep, used, *vkey == ""})
	}
	fmt.Fprintf(stdout, "ok: %s\n", rep.Origin)
	fmt.Fprintf(stdout, "  entries      %d, root %x\n", rep.Size, rep.Root)
	var kinds []string
	for _, k := range slices.Sorted(maps.Keys(rep.ByKind)) {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, rep.ByKind[k]))
	}
	if len(kinds) > 0 {
		fmt.Fprintf(stdout, "  records      %s\n", strings.Join(kinds, ", "))
	}
	fmt.Fprintf(stdout, "  tiles        %d checked against the entries\n", rep.Tiles)
	fmt.Fprintf(stdout, "  consistent   with %d kept checkpoints (sizes %v)\n", len(rep.Consistent), rep.Consistent)
	if *vkey == "" {
		fmt.Fprintf(stdout, "  key          %s (read from the directory: pass --vkey to check it is the node you expect)\n", used)
	} else {
		fmt.Fprintf(stdout, "  key          %s\n", used)
	}
	return nil
}
