package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agent6/agent6/identity"
	"github.com/agent6/agent6/node/policy"
)

var policyCommands = map[string]command{
	"sign":    {summary: "compile a Cedar policy, run its tests, sign it with the trust domain's CA (offline)", run: runPolicySign},
	"test":    {summary: "run the tests of a signed document, or of a Cedar file and its tests file (offline)", run: runPolicyTest},
	"show":    {summary: "print a signed document: domain, serial, signer, policies, tests (offline)", run: runPolicyShow},
	"explain": {summary: "decide one request with signed documents, and say why (offline)", run: runPolicyExplain},
}

func runPolicy(args []string, stdout io.Writer) error {
	return dispatch("policy", policyCommands, args, stdout)
}

// testsFor returns the tests file to use with a Cedar file: the one given,
// or else POLICY.tests.yaml beside it when that exists ("" for none).
func testsFor(cedarFile, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	sibling := strings.TrimSuffix(cedarFile, filepath.Ext(cedarFile)) + ".tests.yaml"
	if _, err := os.Stat(sibling); err == nil {
		return sibling, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return "", nil
}

// loadSource reads a Cedar file and its tests into a document of td.
func loadSource(cedarFile, testsFile, td string, serial uint64) (*policy.Document, error) {
	text, err := os.ReadFile(cedarFile)
	if err != nil {
		return nil, err
	}
	d := &policy.Document{TrustDomain: td, Serial: serial, IssuedAt: time.Now(), Name: filepath.Base(cedarFile), Policy: string(text)}
	if testsFile != "" {
		if d.Tests, err = policy.LoadTests(testsFile); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func runPolicySign(args []string, stdout io.Writer) error {
	fs := newFlags("policy sign", "--ca DIR [--tests TESTS] --out SIGNED [--serial N] POLICY.cedar")
	caDir := fs.String("ca", "", "CA directory (ca.crt, ca.key) of the trust domain the policy governs")
	testsFile := fs.String("tests", "", "tests file (YAML); default POLICY.tests.yaml beside the Cedar file, if it exists")
	out := fs.String("out", "", "where to write the signed document (PEM AGENT6 POLICY)")
	serial := fs.Uint64("serial", 0, "the document's serial; default one more than the last this CA signed (DIR/"+policy.SerialFile+")")
	src, err := parseOne(fs, args, "POLICY.cedar")
	if err != nil {
		return err
	}
	if *caDir == "" || *out == "" {
		return fmt.Errorf("%w: --ca and --out are required", errUsage)
	}
	ca, err := identity.LoadCA(*caDir)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	last, err := policy.LastSerial(*caDir)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	switch {
	case *serial == 0:
		*serial = last + 1
	case *serial <= last:
		return fmt.Errorf("--serial %d: this CA already signed serial %d, and nodes refuse a serial not above the one in force", *serial, last)
	}
	tf, err := testsFor(src, *testsFile)
	if err != nil {
		return fmt.Errorf("--tests: %w", err)
	}
	doc, err := loadSource(src, tf, ca.TrustDomain(), *serial)
	if err != nil {
		return err
	}
	rec, report, err := policy.Sign(ca, doc)
	if report != nil {
		printReport(stdout, report, tf, false)
	}
	if err != nil {
		return fmt.Errorf("%s: not signed: %w", src, err)
	}
	if err := policy.WriteFile(*out, rec); err != nil {
		return err
	}
	if err := policy.RecordSerial(*caDir, *serial); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed %s: %d policies, serial %d, %s\n", doc, len(doc.Policies()), doc.Serial, *out)
	return nil
}

// printReport prints each test's outcome; quiet prints only failures.
func printReport(w io.Writer, r *policy.TestReport, testsFile string, quiet bool) {
	if len(r.Results) == 0 {
		fmt.Fprintf(w, "no tests\n")
		return
	}
	failed := 0
	for _, t := range r.Results {
		if t.Pass {
			if !quiet {
				fmt.Fprintf(w, "PASS %s\n", t.Name)
			}
			continue
		}
		failed++
		fmt.Fprintf(w, "FAIL %s: %s\n", t.Name, t.Problem)
	}
	src := ""
	if testsFile != "" {
		src = " (" + testsFile + ")"
	}
	fmt.Fprintf(w, "%d passed, %d failed%s\n", len(r.Results)-failed, failed, src)
}

// loadSigned reads a signed document file: verified against bundle when
// one is given, else decoded with only its record signature checked.
func loadSigned(path string, bundle *identity.Bundle) (*policy.Document, identity.SignedRecord, error) {
	rec, err := policy.LoadFile(path)
	if err != nil {
		return nil, rec, err
	}
	var d *policy.Document
	if bundle != nil {
		d, err = policy.Verify(bundle, rec)
	} else {
		d, err = policy.Decode(rec.Payload)
	}
	if err != nil {
		return nil, rec, fmt.Errorf("%s: %w", path, err)
	}
	return d, rec, nil
}

func loadBundleFlag(path string) (*identity.Bundle, error) {
	if path == "" {
		return nil, nil
	}
	b, err := identity.LoadBundle(path)
	if err != nil {
		return nil, fmt.Errorf("--bundle: %w", err)
	}
	return b, nil
}

func runPolicyTest(args []string, stdout io.Writer) error {
	fs := newFlags("policy test", "[--tests TESTS --trust-domain DOMAIN] FILE")
	testsFile := fs.String("tests", "", "with a Cedar FILE: its tests file; default FILE.tests.yaml beside it")
	td := fs.String("trust-domain", "", "with a Cedar FILE: the trust domain it governs")
	quiet := fs.Bool("q", false, "print only failures and the count")
	file, err := parseOne(fs, args, "FILE")
	if err != nil {
		return err
	}
	var doc *policy.Document
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	tf := ""
	if strings.Contains(string(data), "-----BEGIN "+policy.PEMType+"-----") {
		if *testsFile != "" || *td != "" {
			return fmt.Errorf("%w: a signed document carries its tests and trust domain", errUsage)
		}
		rec, err := policy.ParsePEM(data)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if doc, err = policy.Decode(rec.Payload); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	} else {
		if *td == "" {
			return fmt.Errorf("%w: --trust-domain is required with a Cedar file", errUsage)
		}
		if tf, err = testsFor(file, *testsFile); err != nil {
			return fmt.Errorf("--tests: %w", err)
		}
		if doc, err = loadSource(file, tf, *td, 1); err != nil {
			return err
		}
		if _, err := policy.Compile(doc); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	report := policy.RunTests(doc)
	printReport(stdout, report, tf, *quiet)
	if err := report.Err(); err != nil {
		return err
	}
	return nil
}

func runPolicyShow(args []string, stdout io.Writer) error {
	fs := newFlags("policy show", "--file SIGNED [--bundle BUNDLE] [--cedar] [--json]")
	file := fs.String("file", "", "signed document (PEM AGENT6 POLICY)")
	bundleFile := fs.String("bundle", "", "trust bundle: check that a CA of the document's domain signed it")
	cedar := fs.Bool("cedar", false, "print the Cedar text")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: --file is required", errUsage)
	}
	bundle, err := loadBundleFlag(*bundleFile)
	if err != nil {
		return err
	}
	doc, rec, err := loadSigned(*file, bundle)
	if err != nil {
		return err
	}
	report := policy.RunTests(doc)
	if *asJSON {
		return writeJSON(stdout, struct {
			TrustDomain string              `json:"trust_domain"`
			Serial      uint64              `json:"serial"`
			IssuedAt    time.Time           `json:"issued_at"`
			Name        string              `json:"name,omitempty"`
			Signer      identity.PublicKey  `json:"signer"`
			Verified    bool                `json:"signer_verified"`
			Policies    []policy.PolicyInfo `json:"policies"`
			Tests       *policy.Tests       `json:"tests,omitempty"`
			Cedar       string              `json:"cedar"`
		}{doc.TrustDomain, doc.Serial, doc.IssuedAt, doc.Name, rec.Signer, bundle != nil, doc.Policies(), doc.Tests, doc.Policy})
	}
	if *cedar {
		_, err := io.WriteString(stdout, doc.Policy)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "trust domain\t%s\n", doc.TrustDomain)
	fmt.Fprintf(tw, "serial\t%d\n", doc.Serial)
	fmt.Fprintf(tw, "issued\t%s\n", doc.IssuedAt.Format(time.RFC3339))
	fmt.Fprintf(tw, "source\t%s\n", orDash(doc.Name))
	check := "a CA of " + doc.TrustDomain + " in the bundle (verified)"
	if bundle == nil {
		check = "not checked against a CA (give --bundle)"
	}
	fmt.Fprintf(tw, "signer\t%s, %s\n", rec.Signer, check)
	permits, forbids := 0, 0
	for _, p := range doc.Policies() {
		if p.Effect == "permit" {
			permits++
		} else {
			forbids++
		}
	}
	fmt.Fprintf(tw, "policies\t%d (%d permit, %d forbid)\n", permits+forbids, permits, forbids)
	fmt.Fprintf(tw, "tests\t%d, %d failing\n", len(report.Results), len(report.Failed()))
	tw.Flush()
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID\tEFFECT\tAT\tOBLIGATIONS\n")
	for _, p := range doc.Policies() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.ID, p.Effect, p.Position, orDash(p.Obligations.String()))
	}
	return tw.Flush()
}

func runPolicyExplain(args []string, stdout io.Writer) error {
	fs := newFlags("policy explain", "--file SIGNED [--file SIGNED]... [--bundle BUNDLE] --from WHO --to WHO [--action connect] [--proto tcp] [--port N] [--json]")
	var files stringList
	fs.Var(&files, "file", "a signed document (repeatable: one per trust domain)")
	bundleFile := fs.String("bundle", "", "trust bundle: check that each document is signed by a CA of its domain")
	from := fs.String("from", "", "the principal: an agent or task of a document's tests, a SPIFFE ID or an address")
	to := fs.String("to", "", "the resource, as --from")
	action := fs.String("action", "connect", "connect, discover or audit")
	proto := fs.String("proto", "tcp", "tcp, udp or icmp (connect)")
	port := fs.Uint("port", 0, "destination port (connect over tcp or udp)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(files) == 0 || *from == "" || *to == "" {
		return fmt.Errorf("%w: --file, --from and --to are required", errUsage)
	}
	bundle, err := loadBundleFlag(*bundleFile)
	if err != nil {
		return err
	}
	engine := policy.New(policy.Config{Bundle: bundle})
	known := map[string]policy.Party{}
	for _, f := range files {
		doc, _, err := loadSigned(f, bundle)
		if err != nil {
			return err
		}
		if err := engine.Install(doc); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if doc.Tests != nil {
			parties, err := doc.Tests.Parties(doc.TrustDomain)
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			for name, p := range parties {
				known[name] = p
			}
		}
	}
	req := policy.Request{}
	if req.Principal, err = resolveParty(*from, known); err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	if req.Resource, err = resolveParty(*to, known); err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	if req.Action, err = policy.ParseAction(*action); err != nil {
		return fmt.Errorf("%w: --action: %v", errUsage, err)
	}
	if req.Action == policy.ActionConnect {
		if req.Proto, err = policy.ParseProto(*proto); err != nil {
			return fmt.Errorf("%w: --proto: %v", errUsage, err)
		}
		if *port > 65535 || (*port == 0) != (req.Proto == policy.ProtoICMP) {
			return fmt.Errorf("%w: --port: give 1 to 65535 for tcp and udp, none for icmp", errUsage)
		}
		req.Port = uint16(*port)
	}
	ex := engine.Explain(&req)
	if *asJSON {
		return writeJSON(stdout, ex)
	}
	if bundle == nil {
		fmt.Fprintln(stdout, "(signatures not checked against a CA: give --bundle)")
	}
	return ex.WriteText(stdout)
}

// resolveParty finds who names: a party of the documents' tests by name,
// SPIFFE ID or address; else an agent known only by its SPIFFE ID (no
// groups, roles or skills); else an agent known only by its address (no
// trust domain).
func resolveParty(who string, known map[string]policy.Party) (policy.Party, error) {
	if p, ok := known[who]; ok {
		return p, nil
	}
	for _, p := range known {
		if !p.IsTask() && (p.Agent.ID == who || p.Agent.Addr.String() == who) || p.IsTask() && p.Addr().String() == who {
			return p, nil
		}
	}
	if strings.HasPrefix(who, "spiffe://") {
		sel, err := policy.ParseSelector(who)
		if err != nil {
			return policy.Party{}, err
		}
		td := strings.SplitN(strings.TrimPrefix(sel.Value, "spiffe://"), "/", 2)[0]
		return policy.AgentParty(policy.Agent{Addr: policy.FixtureAddr(sel.Value), ID: sel.Value, TrustDomain: td}), nil
	}
	if a, err := netip.ParseAddr(who); err == nil && identity.IsOverlay(a) {
		return policy.AgentParty(policy.Agent{Addr: a}), nil
	}
	return policy.Party{}, fmt.Errorf("%q is not an agent or task of the documents' tests, a SPIFFE ID or an overlay address", who)
}
