"""The nemesis suite's instrumented MCP upstream, over stdio or HTTP.

`nemesis/count {key, call}` increments a counter and answers {incarnation, n}; every execution
is appended to a log as one JSON line {call, key, replica, incarnation, n, at}, `at` on the
system's monotonic clock (the one the Rust harness reads too), written with one O_APPEND write.

stdio: `nemesis_upstream.py stdio` — one child per session, so the counter is the session's
  state and the incarnation is this process; the replica is $NEMESIS_REPLICA, the log
  $NEMESIS_LOG (mcpg passes its environment with `inherit_env`).
http: `nemesis_upstream.py http <port> <log> [host]` — one process for all, on `host`
  (default 127.0.0.1; a partition scenario binds an address its network namespace reaches); the counter is per `key`
  (the client's session) and survives takeovers; the replica is the `X-Nemesis-Replica` header.

Fencing, as an upstream that cares about stale writes does it: a `nemesis/count` carrying a
fencing token (mcpg's `fencing_token: meta`, `params._meta["dev.mcpg/fencingToken"]`, or
`header`, `Mcp-Fencing-Token`) is refused with a JSON-RPC error when a higher token was already
seen for its session, and otherwise raises the session's highest token, atomically with the
execution. The HTTP upstream keeps the highest token per upstream session (`Mcp-Session-Id`,
which a replica taking a session over resumes). A stdio child is one session's state, but an
earlier owner's stale request reaches the earlier child, which never sees the new owner's
tokens: the children of one client session therefore share a register (one file per `key`
beside the log, under `flock`), as a stdio server writing to shared storage would. Refusals
are logged too, as {call, key, replica, refused: true, token, highest, at}.
"""

import fcntl
import json
import os
import sys
import threading
import time

LOCK = threading.Lock()
COUNTERS = {}


def record(log_fd, entry):
    entry["at"] = time.monotonic()
    os.write(log_fd, (json.dumps(entry) + "\n").encode())


class Stale(Exception):
    """A request carrying a lower fencing token than one already seen for its session."""


class MemoryRegister:
    """Highest token per upstream session, in this process (the HTTP upstream)."""

    def __init__(self):
        self.highest = {}

    def run(self, session, token, execute):
        # Called under LOCK: check, raise and execute are one step.
        highest = self.highest.get(session, 0)
        if token is not None:
            if token < highest:
                raise Stale(token, highest)
            self.highest[session] = token
        return execute()


class FileRegister:
    """Highest token per client session key, shared by every stdio child (one file per key,
    read, checked and raised under an exclusive flock held across the execution)."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def run(self, session, token, execute):
        if token is None:
            return execute()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(session))
        fd = os.open(os.path.join(self.dir, safe), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 64, 0).decode().strip()
            highest = int(raw) if raw else 0
            if token < highest:
                raise Stale(token, highest)
            if token > highest:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(token).encode(), 0)
            return execute()
        finally:
            os.close(fd)


def token_of(msg, header):
    meta = (msg.get("params") or {}).get("_meta") or {}
    t = meta.get("dev.mcpg/fencingToken")
    if t is None and header:
        t = int(header)
    return t


def answer(msg, replica, incarnation, log_fd, counter_key, register, session, header=None):
    """The result, or a JSON-RPC error object for a stale request."""
    method = msg.get("method")
    if method == "initialize":
        return {"protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "nemesis-upstream", "version": "1"}}, None
    if method == "nemesis/count":
        p = msg.get("params") or {}
        token = token_of(msg, header)
        base = {"call": p.get("call"), "key": p.get("key"), "replica": replica}

        def execute():
            k = counter_key(p)
            n = COUNTERS.get(k, 0) + 1
            COUNTERS[k] = n
            record(log_fd, dict(base, incarnation=incarnation, n=n, token=token))
            return {"incarnation": incarnation, "n": n}

        with LOCK:
            try:
                return register.run(session(p), token, execute), None
            except Stale as e:
                t, h = e.args
                record(log_fd, dict(base, refused=True, token=t, highest=h))
                return None, {"code": -32002,
                              "message": f"stale fencing token {t}: this session has seen {h}; not run"}
    if method == "tools/list":
        return {"tools": []}, None
    return {}, None


def reply(msg, result, error):
    out = {"jsonrpc": "2.0", "id": msg["id"]}
    if error is not None:
        out["error"] = error
    else:
        out["result"] = result
    return json.dumps(out)


def stdio():
    replica = os.environ.get("NEMESIS_REPLICA", "?")
    log_fd = os.open(os.environ["NEMESIS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    incarnation = f"{replica}/{os.getpid()}"
    register = FileRegister(os.environ["NEMESIS_LOG"] + ".fence")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if "id" not in msg or "method" not in msg:
            continue
        result, error = answer(msg, replica, incarnation, log_fd, lambda p: "session",
                               register, lambda p: p.get("key"))
        sys.stdout.write(reply(msg, result, error) + "\n")
        sys.stdout.flush()


def http(port, log, host="127.0.0.1"):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    register = MemoryRegister()

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
            upstream_session = self.headers.get("Mcp-Session-Id")
            result, error = answer(msg, replica, "http", log_fd, lambda p: p.get("key"),
                                   register, lambda p: upstream_session or p.get("key"),
                                   self.headers.get("Mcp-Fencing-Token"))
            body = reply(msg, result, error).encode()
            headers = [("Content-Type", "application/json")]
            if msg["method"] == "initialize":
                headers.append(("Mcp-Session-Id", f"up-{time.monotonic_ns()}"))
            self.reply(200, body, headers)

        def do_GET(self):
            self.reply(405)

        def do_DELETE(self):
            self.reply(200)

    ThreadingHTTPServer((host, port), H).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        stdio()
    else:
        http(int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
