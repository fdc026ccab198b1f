# Agent6. `make demo` runs the embedded quickstart (no root); `make test`
# runs every test (the netns and TUN tests need root and skip without it).
GO      ?= go
# An execution count, not a duration: a duration races the fuzz coordinator
# in Go 1.26 (golang/go#75804: a spurious "context deadline exceeded"
# failure at the deadline, no failing input). A count has no deadline.
FUZZTIME ?= 100000x

.PHONY: all build demo test unit fuzz lint bench clean install

# Where `make install` puts things; DESTDIR for packaging.
PREFIX  ?= /usr/local
DESTDIR ?=

all: build

build:
	$(GO) build -o bin/agent6 ./cmd/agent6

demo:
	$(GO) run ./examples/quickstart

# The whole suite: lint, race-enabled tests (integration tests included
# when run as root), then each fuzz target briefly on its seed corpus:
# 20 000 executions each in the suite (some thirty targets at 100 000 took
# seven minutes), 100 000 with `make fuzz`.
test: FUZZTIME = 20000x
test: lint unit fuzz

# One package's tests at a time (-p 1; the test binaries build in parallel
# first): the integration tests each run a whole system on this machine
# (30 nodes in one process, NAT topologies with iperf3 and coturn, sidecars
# in namespaces), and two at once on two cores starve each other into
# timeouts that say nothing about the code.
unit:
	$(GO) test -race -count=1 -run '^$$' ./... >/dev/null
	$(GO) test -race -count=1 -p 1 -timeout 10m ./...

fuzz:
	@set -e; for spec in \
		identity:FuzzParsePrivateKeyPEM identity:FuzzParseWGPublicKey identity:FuzzParseSignedRecord \
		identity:FuzzVerify identity:FuzzParseBundle identity:FuzzParseRevocation \
		identity:FuzzParseDelegation identity:FuzzParseLink \
		overlay:FuzzParseIPv6 overlay:FuzzHandshakes overlay:FuzzParsePathFrame overlay:FuzzSTUN overlay:FuzzParseSRv6 \
		node/config:FuzzParse \
		node/membership:FuzzParseToken node/membership:FuzzDecodeMeta \
		node/membership:FuzzParseRecord node/membership:FuzzDecodeState \
		node/membership:FuzzFrames node/membership:FuzzParseChain node/card:FuzzParse \
		node/dns:FuzzAnswer node/policy:FuzzDecode node/policy:FuzzCompile \
		node/policy:FuzzParseSelector node/policy:FuzzParseAnnotation node/policy:FuzzParseTests \
		node/audit:FuzzDecode node/audit:FuzzParseCheckpoint \
		node/audit:FuzzWitness node/audit:FuzzAddCosignature; do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test ./$$pkg -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME); \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Benchmarks (root; not part of CI): filter micro-benchmark, then the netns
# comparison of raw veth, plain wireguard-go and the agent6 sidecar.
bench: build
	$(GO) build -o bin/wireguard-go golang.zx2c4.com/wireguard
	$(GO) build -o bin/smallflow ./bench/cmd/smallflow
	$(GO) build -o bin/netbench ./bench/cmd/netbench
	$(GO) test ./overlay -run '^$$' -bench . -benchtime 2s -count 5 | tee bench/filter.txt
	./bin/netbench -bin bin -out bench/RESULTS.md $(BENCHFLAGS)
	$(GO) run ./bench/cmd/gossipbench -out bench/RESULTS.md
	$(GO) run ./bench/cmd/taskbench -out bench/RESULTS.md
	$(GO) run ./bench/cmd/floodbench -out bench/RESULTS.md

# The binary, the systemd unit and the agent6 user, shell completion, and
# the sample configuration (kept if /etc/agent6/agent6.yaml exists). Then:
# systemd-sysusers; agent6 keygen --out /etc/agent6/agent.key; chown
# agent6: /etc/agent6/agent.key; edit /etc/agent6/agent6.yaml; systemctl
# enable --now agent6 (README.md, "Running under systemd").
install: build
	install -D -m 0755 bin/agent6 $(DESTDIR)$(PREFIX)/bin/agent6
	install -d -m 0755 $(DESTDIR)/etc/systemd/system $(DESTDIR)/usr/lib/sysusers.d $(DESTDIR)/etc/agent6
	sed 's|/usr/local/bin/agent6|$(PREFIX)/bin/agent6|' examples/systemd/agent6.service > $(DESTDIR)/etc/systemd/system/agent6.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/agent6.service
	install -m 0644 examples/systemd/agent6.sysusers $(DESTDIR)/usr/lib/sysusers.d/agent6.conf
	[ -e $(DESTDIR)/etc/agent6/agent6.yaml ] || install -m 0644 examples/agent6.yaml $(DESTDIR)/etc/agent6/agent6.yaml
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions
	bin/agent6 completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/agent6
	bin/agent6 completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_agent6

clean:
	rm -rf bin
