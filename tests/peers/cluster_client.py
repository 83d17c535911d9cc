"""Runs one long MCP session with the `mcp` package's client, for the cluster tests: many
calls in a row while the test kills replicas behind the load balancer.

usage: cluster_client.py URL MODE PLAN
  MODE  legacy | 2026-07-28
  PLAN  JSON: {"call": {"name": ..., "arguments": {...}},   # repeated until stopped
               "stop_file": PATH,        # the loop ends once this file exists
               "max_calls": N,           # or after N calls
               "pause_ms": N,            # between calls
               "first": [{"name":..., "arguments":...}],  # called once, before the loop
               "answer": true,           # declare sampling and elicitation, and answer them
               "subscribe": URI}         # legacy: resources/subscribe before the loop

Prints JSON lines: {"event": "ready", "session": ID} once the session is set up (the test
waits for it), then one {"event": "report", ...} at the end, with every failed call (its
index, time and error), the number of calls that succeeded, and every resource update
received (with its time), and the slowest call; all times in seconds since the epoch.
"""

import json
import os
import sys
import time
import traceback

import anyio
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def text_of(contents):
    return [getattr(c, "text", None) or f"<{getattr(c, 'type', '?')}>" for c in contents]


def emit(obj):
    print(json.dumps(obj), flush=True)


async def main() -> None:
    url, mode, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    report = {"event": "report", "failures": [], "ok": 0, "updates": [], "first": [],
              "server_requests": []}
    session = {}

    async def remember_session(response):
        sid = response.headers.get("mcp-session-id")
        if sid:
            session["id"] = sid

    http = create_mcp_http_client()
    http.event_hooks["response"].append(remember_session)

    async def on_message(message):
        root = getattr(message, "root", message)
        if isinstance(root, types.ResourceUpdatedNotification):
            report["updates"].append({"t": time.time(), "uri": str(root.params.uri)})

    callbacks = {}
    if plan.get("answer"):
        async def sampling(context, params):
            report["server_requests"].append("sampling/createMessage")
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text="sampled by the cluster client"),
                model="test-model",
                stop_reason="endTurn",
            )

        async def elicitation(context, params):
            report["server_requests"].append("elicitation/create")
            return types.ElicitResult(action="accept", content={"name": "Grace Hopper"})

        callbacks = dict(sampling_callback=sampling, elicitation_callback=elicitation)

    transport = streamable_http_client(url, http_client=http)
    async with Client(transport, mode=mode, read_timeout_seconds=60, message_handler=on_message,
                      **callbacks) as c:
        if plan.get("subscribe"):
            await c.session.subscribe_resource(plan["subscribe"])
        for call in plan.get("first", []):
            try:
                r = await c.call_tool(call["name"], call.get("arguments", {}))
                report["first"].append({"name": call["name"], "is_error": bool(r.is_error),
                                        "text": text_of(r.content)})
            except Exception as e:
                report["first"].append({"name": call["name"], "exception": repr(e)})
        emit({"event": "ready", "session": session.get("id")})
        call = plan["call"]
        pause = plan.get("pause_ms", 20) / 1000
        i = 0
        while i < plan.get("max_calls", 100000) and not os.path.exists(plan["stop_file"]):
            i += 1
            t = time.time()
            try:
                r = await c.call_tool(call["name"], call.get("arguments", {}))
                if r.is_error:
                    report["failures"].append({"i": i, "t": t, "error": text_of(r.content)})
                else:
                    report["ok"] += 1
                    report["last_text"] = text_of(r.content)
                took = time.time() - t
                if took > report.get("slowest", {}).get("took", 0):
                    report["slowest"] = {"i": i, "t": t, "took": took}
            except Exception as e:
                report["failures"].append({"i": i, "t": t, "took": time.time() - t,
                                           "error": repr(e)})
            await anyio.sleep(pause)
        report["calls"] = i
        report["session"] = session.get("id")
    emit(report)


try:
    anyio.run(main)
except BaseException:
    traceback.print_exc()
    sys.exit(1)
