#!/usr/bin/env python3
"""A tool service for the Agent6 sidecar walk-through (run.sh).

It listens on its agent's overlay address and answers every HTTP request
with who called: it asks its own sidecar's LocalAPI (GET /v1/whois on the
unix socket) about the caller's source address. On the overlay that answer
is authenticated: WireGuard only accepts a packet from the key that owns
its source address, and a task's address only once its owner has handed
this node the signed delegation.

    python3 service.py LISTEN_ADDR PORT LOCALAPI_SOCKET

Standard library only.
"""

import http.client
import json
import socket
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer


class LocalAPI(http.client.HTTPConnection):
    """HTTP to the sidecar's LocalAPI over its unix socket."""

    def __init__(self, path):
        super().__init__("agent6", timeout=5)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.socket_path)


def whois(sock_path, addr):
    """Returns (HTTP status, JSON body) of GET /v1/whois?addr=ADDR."""
    c = LocalAPI(sock_path)
    try:
        c.request("GET", "/v1/whois?" + urllib.parse.urlencode({"addr": addr}))
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        caller = self.client_address[0]
        status, who = whois(self.server.localapi, caller)
        if status != 200:
            # Not on the overlay, or nobody we know: refuse.
            self.reply(403, f"who are you, {caller}? {who.get('error')} ({who.get('code')})\n")
            return
        task = who.get("task")
        if task:
            text = (f"hello task {who['address']}: class {task.get('class', '-')}, "
                    f"sensitivity {task.get('sensitivity', '-')}, depth {task['depth']}, "
                    f"pseudonym {task['pseudonym']}, on behalf of {who.get('spiffe_id', '?')} "
                    f"({task['owner']})\n")
        else:
            text = f"hello agent {who['address']}: {who.get('spiffe_id', 'a static peer')}\n"
        self.reply(200, text)

    def reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("service: %s %s\n" % (self.client_address[0], fmt % args))


class Server(HTTPServer):
    address_family = socket.AF_INET6


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: service.py LISTEN_ADDR PORT LOCALAPI_SOCKET")
    srv = Server((sys.argv[1], int(sys.argv[2])), Handler)
    srv.localapi = sys.argv[3]
    print(f"service: listening on [{sys.argv[1]}]:{sys.argv[2]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
