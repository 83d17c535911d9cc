"""A stdio MCP upstream that answers every request with the request exactly as it arrived,
for the lossless pass-through tests. Not a model of a real server: it proves what mcpg
forwards and what it returns, byte for byte in meaning.

initialize -> a normal InitializeResult (plus an unknown field)
echo/emit {count} -> answers, then sends `count` notifications/message outside any request
echo/sleep {ms} -> answers after `ms` milliseconds
echo/exit -> the process exits without answering (a crash, as far as mcpg can tell)
echo/big {bytes} -> answers with a text of `bytes` bytes, on one line
any other request -> {"received": <the request>, "x-extra": {...}, "content": [...]}
notifications -> remembered; the method `echo/notifications` returns them
"""

import json
import os
import sys
import time

seen = []


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = json.loads(line)
    if "id" not in msg:
        seen.append(msg)
        continue
    if "method" not in msg:
        continue
    if msg["method"] == "initialize":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}, "x-vendor-capability": {"on": True}},
            "serverInfo": {"name": "echo-upstream", "version": "1"},
            "x-unknown-init-field": [1, 2, 3],
        }})
    elif msg["method"] == "echo/notifications":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"notifications": seen}})
    elif msg["method"] == "echo/sleep":
        time.sleep(msg["params"]["ms"] / 1000)
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"slept": msg["params"]["ms"], "pid": os.getpid()}})
    elif msg["method"] == "echo/big":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "content": [{"type": "text", "text": "x" * msg["params"]["bytes"]}], "pid": os.getpid()}})
    elif msg["method"] == "echo/exit":
        sys.exit(3)
    elif msg["method"] == "echo/emit":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        for i in range(msg["params"]["count"]):
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "data": {"n": i + 1}}})
    elif msg["method"] == "tools/list":
        # Two pages, to prove pagination survives merging.
        if (msg.get("params") or {}).get("cursor") == "page-2":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "tools": [{"name": "echo2", "inputSchema": {"type": "object"}}],
            }})
        else:
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "tools": [{"name": "echo", "inputSchema": {"type": "object"}, "x-tool-extra": {"a": None}}],
                "x-list-extra": "kept",
                "nextCursor": "page-2",
            }})
    else:
        send({"jsonrpc": "2.0", "id": msg["id"], "x-envelope-extra": "kept", "result": {
            "received": msg,
            "content": [{"type": "text", "text": "ok", "x-content-extra": 1}],
            "x-extra": {"nested": {"deep": [True, None, 1.5, "é"]}},
        }})
