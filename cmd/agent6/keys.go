package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/agent6/agent6/identity"
)

func runKeygen(args []string, stdout io.Writer) error {
	fs := newFlags("keygen", "--out FILE [--force]")
	out := fs.String("out", "", "where to write the key (PKCS#8 PEM, mode 0600)")
	force := fs.Bool("force", false, "replace an existing file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	k, err := identity.GeneratePrivateKey()
	if err != nil {
		return err
	}
	if err := identity.WritePrivateKey(*out, k, *force); err != nil {
		if errors.Is(err, identity.ErrKeyExists) {
			return fmt.Errorf("%s exists; pass --force to replace it (its address will change)", *out)
		}
		return err
	}
	addr, _ := k.Public().Addr()
	fmt.Fprintf(stdout, "%s\n", addr)
	return nil
}

func runPubkey(args []string, stdout io.Writer) error {
	fs := newFlags("pubkey", "--key FILE")
	keyFile := fs.String("key", "", "agent key file (PKCS#8 Ed25519 PEM)")
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
	fmt.Fprintln(stdout, k.WireGuard().Public())
	return nil
}

func runAddr(args []string, stdout io.Writer) error {
	fs := newFlags("addr", "--key FILE | --wg-pubkey BASE64")
	keyFile := fs.String("key", "", "agent key file (PKCS#8 Ed25519 PEM)")
	wgPub := fs.String("wg-pubkey", "", "a WireGuard public key, base64 as `wg pubkey` prints it")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case (*keyFile == "") == (*wgPub == ""):
		return fmt.Errorf("%w: give exactly one of --key and --wg-pubkey", errUsage)
	case *keyFile != "":
		k, err := identity.LoadPrivateKey(*keyFile)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, k.WireGuard().Public().Addr())
	default:
		p, err := identity.ParseWGPublicKey(*wgPub)
		if err != nil {
			return fmt.Errorf("--wg-pubkey: %w", err)
		}
		fmt.Fprintln(stdout, p.Addr())
	}
	return nil
}
