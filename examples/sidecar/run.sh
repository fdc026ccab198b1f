#!/usr/bin/env bash
# The Agent6 sidecar walk-through, end to end (see README.md).
#
# As root: two network namespaces joined by a veth pair, an organisation
# CA, one sidecar (`agent6 up`) in each. Then, as an agent runtime in any
# language would, using nothing but curl against the LocalAPI socket: start
# a task, call a service in the other namespace from the task's address,
# and end the task. The service (service.py) asks its own LocalAPI who
# called. All traffic stays inside the two namespaces this script creates;
# it removes them, its processes (by PID) and its files when it exits.
#
#   sudo examples/sidecar/run.sh            # builds agent6 with go
#   sudo AGENT6=bin/agent6 examples/sidecar/run.sh
#
# Needs: ip (iproute2), curl, python3, /dev/net/tun, and go unless AGENT6
# names a built agent6. It installs nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { echo "run.sh: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, TUN devices)"
command -v ip >/dev/null || die "needs the ip command (Debian: apt-get install iproute2)"
command -v curl >/dev/null || die "needs curl, which the agent runtime uses to talk to the LocalAPI (Debian: apt-get install curl)"
command -v python3 >/dev/null || die "needs python3, for the service in the second namespace and to read JSON (Debian: apt-get install python3)"
[ -e /dev/net/tun ] || die "needs /dev/net/tun"

# json FIELD: one field of the JSON object on stdin.
json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

work=$(mktemp -d /tmp/agent6-sidecar.XXXXXX)
ns_a="a6ex-$$-a"
ns_b="a6ex-$$-b"
pids=()

cleanup() {
	set +e
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${pids[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	ip netns delete "$ns_a" 2>/dev/null
	ip netns delete "$ns_b" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${AGENT6:-}" ]; then
	agent6=$(realpath "$AGENT6")
	[ -x "$agent6" ] || die "AGENT6=$AGENT6 is not an executable"
else
	command -v go >/dev/null || die "needs go to build agent6, or AGENT6=path/to/agent6"
	step "build agent6"
	(cd "$repo" && go build -o "$work/agent6" ./cmd/agent6)
	agent6=$work/agent6
fi
cd "$work"

step "two hosts: namespaces $ns_a and $ns_b, joined by a veth pair"
ip netns add "$ns_a"
ip netns add "$ns_b"
ip -n "$ns_a" link add va type veth peer name vb netns "$ns_b"
ip -n "$ns_a" addr add 10.99.0.1/24 dev va
ip -n "$ns_b" addr add 10.99.0.2/24 dev vb
ip -n "$ns_a" link set lo up
ip -n "$ns_a" link set va up
ip -n "$ns_b" link set lo up
ip -n "$ns_b" link set vb up

step "an organisation CA and one credential per agent"
"$agent6" ca init --trust-domain example.org --out ca
"$agent6" keygen --out a.key >/dev/null
"$agent6" keygen --out b.key >/dev/null
"$agent6" ca issue --ca ca --key a.key --name planner --out a.crt
"$agent6" ca issue --ca ca --key b.key --name tool --group tools --out b.crt

# start_sidecar NS NAME: `agent6 up --config NAME.yaml` in NS; waits for
# its LocalAPI. `ip netns exec` execs agent6, so $! is agent6's own PID.
start_sidecar() {
	ip netns exec "$1" "$agent6" up --config "$2.yaml" >"$2.log" 2>&1 &
	pids+=($!)
	local pid=$!
	for _ in $(seq 100); do
		curl -sf --unix-socket "$work/$2.sock" http://agent6/v1/status >/dev/null && return
		kill -0 "$pid" 2>/dev/null || { cat "$2.log" >&2; die "sidecar $2 exited"; }
		sleep 0.1
	done
	cat "$2.log" >&2
	die "sidecar $2 never answered on $work/$2.sock"
}

step "sidecar A (the planner's host), the seed"
cat >a.yaml <<EOF
key: a.key
credential: a.crt
trust_bundle: ca/ca.crt
localapi: $work/a.sock
EOF
start_sidecar "$ns_a" a
token=$(curl -sS --unix-socket a.sock http://agent6/v1/invite | json token)
echo "join token: $token"

step "sidecar B (the tool's host), joining through A's token"
cat >b.yaml <<EOF
key: b.key
credential: b.crt
trust_bundle: ca/ca.crt
localapi: $work/b.sock
join: ["$token"]
EOF
start_sidecar "$ns_b" b
addr_a=$(curl -sS --unix-socket a.sock http://agent6/v1/status | json address)
addr_b=$(curl -sS --unix-socket b.sock http://agent6/v1/status | json address)
echo "A is $addr_a, B is $addr_b"
# alive SOCK ADDR: whether the node at SOCK knows ADDR as an alive member.
alive() {
	curl -sS --unix-socket "$1" http://agent6/v1/peers | python3 -c '
import json, sys
sys.exit(not any(p["address"] == sys.argv[1] and p["state"] == "alive" for p in json.load(sys.stdin)))' "$2"
}
admitted=no
for _ in $(seq 150); do
	if alive a.sock "$addr_b" && alive b.sock "$addr_a"; then
		admitted=yes
		break
	fi
	sleep 0.2
done
[ $admitted = yes ] || die "A and B did not admit each other within 30 s"
echo "A and B admitted each other:"
show "curl --unix-socket a.sock http://agent6/v1/peers"
curl -sS --unix-socket a.sock http://agent6/v1/peers

step "the tool's service in $ns_b, on B's overlay address (python3, asks B's LocalAPI who calls)"
ip netns exec "$ns_b" python3 "$here/service.py" "$addr_b" 8080 "$work/b.sock" >service.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do
	grep -q listening service.log && break
	sleep 0.1
done
grep -q listening service.log || { cat service.log >&2; die "the service did not start"; }

# From here on: the agent runtime in namespace A. It speaks HTTP/JSON to
# its sidecar's unix socket and opens ordinary sockets; nothing else.
in_a() { ip netns exec "$ns_a" "$@"; }

step "the runtime calls the tool from the agent's own address"
show "curl -g http://[$addr_b]:8080/"
in_a curl -sS -g "http://[$addr_b]:8080/"

step "the runtime starts a task: its own key, its own address"
body='{"class": "tool-call", "sensitivity": "low", "scope": ["search"], "ttl": "10m", "id": "order-42"}'
show "curl --unix-socket a.sock -X POST -d '$body' http://agent6/v1/tasks"
task=$(in_a curl -sS --unix-socket a.sock -X POST -H 'Content-Type: application/json' -d "$body" http://agent6/v1/tasks)
echo "$task"
task_id=$(json id <<<"$task")
task_addr=$(json address <<<"$task")
show "ip -6 addr show dev agent6   # the task's address is on A's TUN, ready to bind"
in_a ip -6 addr show dev agent6 | grep -F "$task_addr"

step "the runtime calls the tool from the task's address"
show "curl --interface $task_addr -g http://[$addr_b]:8080/"
in_a curl -sS --interface "$task_addr" -g "http://[$addr_b]:8080/"

step "B, asked directly, says the same"
show "curl --unix-socket b.sock 'http://agent6/v1/whois?addr=$task_addr'"
curl -sS --unix-socket b.sock "http://agent6/v1/whois?addr=$task_addr"

step "A's running tasks"
show "curl --unix-socket a.sock http://agent6/v1/tasks"
in_a curl -sS --unix-socket a.sock http://agent6/v1/tasks

step "the runtime ends the task; B forgets it"
show "curl --unix-socket a.sock -X DELETE http://agent6/v1/tasks/$task_id"
in_a curl -sS --unix-socket a.sock -X DELETE -o /dev/null -w 'HTTP %{http_code}\n' "http://agent6/v1/tasks/$task_id"
for _ in $(seq 50); do
	code=$(curl -s --unix-socket b.sock -o /dev/null -w '%{http_code}' "http://agent6/v1/whois?addr=$task_addr")
	[ "$code" = 404 ] && break
	sleep 0.1
done
show "curl --unix-socket b.sock 'http://agent6/v1/whois?addr=$task_addr'"
curl -sS --unix-socket b.sock "http://agent6/v1/whois?addr=$task_addr"
[ "$code" = 404 ] || die "B still knows the ended task"

step "done; the service's log:"
cat service.log
