"""The nemesis suite's instrumented MCP upstream, over stdio or HTTP.

`nemesis/count {key, call}` increments a counter and answers {incarnation, n}; every execution
is appended to a log as one JSON line {call, key, replica, incarnation, n, at}, `at` on the
system's monotonic clock (the one the Rust harness reads too), written with one O_APPEND write.

stdio: `nemesis_upstream.py stdio` — one child per session, so the counter is the session's
  state and the incarnation is this process; the replica is $NEMESIS_REPLICA, the log
  $NEMESIS_LOG (mcpg passes its environment with `inherit_env`).
http: `nemesis_upstream.py http <port> <log>` — one process for all; the counter is per `key`
  (the client's session) and survives takeovers; the replica is the `X-Nemesis-Replica` header.
"""

import json
import os
import sys
import threading
import time

LOCK = threading.Lock()
COUNTERS = {}


def record(log_fd, call, key, replica, incarnation, n):
    line = json.dumps({"call": call, "key": key, "replica": replica,
                       "incarnation": incarnation, "n": n, "at": time.monotonic()})
    os.write(log_fd, (line + "\n").encode())


def answer(msg, replica, incarnation, log_fd, counter_key):
    method = msg.get("method")
    if method == "initialize":
        return {"protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "nemesis-upstream", "version": "1"}}
    if method == "nemesis/count":
        p = msg.get("params") or {}
        with LOCK:
            k = counter_key(p)
            n = COUNTERS.get(k, 0) + 1
            COUNTERS[k] = n
            record(log_fd, p.get("call"), p.get("key"), replica, incarnation, n)
        return {"incarnation": incarnation, "n": n}
    if method == "tools/list":
        return {"tools": []}
    return {}


def stdio():
    replica = os.environ.get("NEMESIS_REPLICA", "?")
    log_fd = os.open(os.environ["NEMESIS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    incarnation = f"{replica}/{os.getpid()}"
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if "id" not in msg or "method" not in msg:
            continue
        result = answer(msg, replica, incarnation, log_fd, lambda p: "session")
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
        sys.stdout.flush()


def http(port, log):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            msg = json.loads(self.rfile.read(n) or b"{}")
            if "id" not in msg or "method" not in msg:
                return self.reply(202)
            replica = self.headers.get("X-Nemesis-Replica", "?")
            result = answer(msg, replica, "http", log_fd, lambda p: p.get("key"))
            body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
            headers = [("Content-Type", "application/json")]
            if msg["method"] == "initialize":
                headers.append(("Mcp-Session-Id", f"up-{time.monotonic_ns()}"))
            self.reply(200, body, headers)

        def do_GET(self):
            self.reply(405)

        def do_DELETE(self):
            self.reply(200)

    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        stdio()
    else:
        http(int(sys.argv[2]), sys.argv[3])
