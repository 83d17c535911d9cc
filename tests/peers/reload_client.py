"""Calls one tool over and over through the `mcp` package's own client until a stop file
appears, and prints one JSON report: every call's outcome, in order.

usage: reload_client.py URL MODE TOOL STOPFILE READYFILE
  MODE  legacy | 2026-07-28   (initialize a session, or the stateless 2026-07-28 era)
  READYFILE  created after the first call that succeeded

Every server notification the client gets is counted by method and reported too (a session
moved by a reload is told its lists may have changed).

A call that raises is recorded with the exception; the client then connects again (a legacy
session the gateway ended must be initialised anew) and goes on. The end-to-end test of
config reloads runs several of these while it changes the gateway's config.
"""

import json
import os
import sys
import time
import traceback

import anyio
from mcp import Client


async def main() -> None:
    url, mode, tool, stop, ready = sys.argv[1:6]
    calls, connects, n = [], [], 0
    notified: dict[str, int] = {}

    async def on_message(message) -> None:
        inner = getattr(message, "root", message)
        method = getattr(inner, "method", None)
        if isinstance(method, str):
            notified[method] = notified.get(method, 0) + 1

    while not os.path.exists(stop):
        connects.append(time.time())
        try:
            async with Client(url, mode=mode, read_timeout_seconds=60, message_handler=on_message) as c:
                while not os.path.exists(stop):
                    n += 1
                    text = f"call {n}"
                    at = time.time()
                    try:
                        r = await c.call_tool(tool, {"text": text})
                        got = [getattr(x, "text", None) for x in r.content]
                        ok = not r.is_error and got == [text]
                        calls.append({"t": at, "ok": ok, "text": got if not ok else None})
                        if ok and not os.path.exists(ready):
                            open(ready, "w").close()
                    except Exception as e:  # the report carries it; reconnect
                        calls.append({"t": at, "ok": False, "exception": repr(e)[:300]})
                        break
                    await anyio.sleep(0.05)
        except Exception as e:
            calls.append({"t": time.time(), "ok": False, "exception": "connect: " + repr(e)[:300]})
            await anyio.sleep(0.2)
    print(json.dumps({"calls": calls, "connects": connects, "notified": notified}))


try:
    anyio.run(main)
except BaseException:
    traceback.print_exc()
    sys.exit(1)
