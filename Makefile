# Agent6. `make demo` runs the embedded quickstart (no root); `make test`
# runs every test (the netns and TUN tests need root and skip without it).
GO      ?= go
# An execution count, not a duration: a duration races the fuzz coordinator
# in Go 1.26 (golang/go#75804: a spurious "context deadline exceeded"
# failure at the deadline, no failing input). A count has no deadline.
FUZZTIME ?= 100000x

.PHONY: all build demo test unit fuzz lint bench clean

all: build

build:
	$(GO) build -o bin/agent6 ./cmd/agent6

demo:
	$(GO) run ./examples/quickstart

# The whole suite: lint, race-enabled tests (integration tests included
# when run as root), then each fuzz target briefly on its seed corpus.
test: lint unit fuzz

unit:
	$(GO) test -race -count=1 -timeout 10m ./...

fuzz:
	@set -e; for spec in \
		identity:FuzzParsePrivateKeyPEM identity:FuzzParseWGPublicKey identity:FuzzParseSignedRecord \
		identity:FuzzVerify identity:FuzzParseBundle identity:FuzzParseRevocation \
		overlay:FuzzParseIPv6 overlay:FuzzHandshakes overlay:FuzzParseSRv6 node/config:FuzzParse \
		node/membership:FuzzParseToken node/membership:FuzzDecodeMeta \
		node/membership:FuzzParseRecord node/membership:FuzzDecodeState node/card:FuzzParse \
		node/dns:FuzzAnswer; do \
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

clean:
	rm -rf bin
