"""Drives an MCP endpoint with the `mcp` package's own client and prints one JSON report.

usage: py_client.py URL MODE PLAN
  MODE  legacy | auto | 2026-07-28   (how the client connects: initialize, probe, or modern)
  PLAN  JSON: {"calls": [{"name": ..., "arguments": {...}}],
               "prompts": [{"name": ..., "arguments": {...}}],
               "reads": ["uri", ...],
               "answer": true,   # declare sampling, elicitation and roots, and answer them
               "listen": {"resource_subscriptions": [...], "trigger": {"name":..,"arguments":..},
                          "events": N}}   # 2026-07-28: subscriptions/listen, then a call,
                                          # then wait (up to 30 s) for N events

Environment: MCPG_TEST_BEARER, when set, is sent as `Authorization: Bearer <value>` (and
MCPG_TEST_HEADERS, a JSON object, as further headers); MCPG_TEST_CA names a PEM file of the
authorities to trust for an https:// URL.

The report lists what the server offers (every page of every list) and what each planned
operation returned, so the end-to-end tests can assert on what a real client saw.
"""

import json
import os
import ssl
import sys
import traceback

import anyio
from mcp import Client, types


def text_of(contents):
    out = []
    for c in contents:
        t = getattr(c, "text", None)
        if t is None and getattr(c, "resource", None) is not None:
            t = getattr(c.resource, "text", None)
        out.append(t if t is not None else f"<{getattr(c, 'type', type(c).__name__)}>")
    return out


async def all_pages(fetch, key):
    items, cursor = [], None
    while True:
        page = await fetch(cursor=cursor)
        items.extend(getattr(page, key))
        cursor = page.next_cursor
        if cursor is None:
            return items


async def main() -> None:
    url, mode, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    report = {"errors": [], "server_requests": []}
    callbacks = {}
    if plan.get("answer"):
        async def sampling(context, params):
            report["server_requests"].append("sampling/createMessage")
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text="sampled by the test client"),
                model="test-model",
                stop_reason="endTurn",
            )

        async def elicitation(context, params):
            report["server_requests"].append("elicitation/create")
            return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

        async def roots(context):
            report["server_requests"].append("roots/list")
            return types.ListRootsResult(
                roots=[types.Root(uri="file:///tmp/mcpg-e2e-root", name="e2e-root")]
            )

        callbacks = dict(
            sampling_callback=sampling, elicitation_callback=elicitation, list_roots_callback=roots
        )
    target, extra = url, {}
    headers = json.loads(os.environ.get("MCPG_TEST_HEADERS", "{}"))
    if os.environ.get("MCPG_TEST_BEARER"):
        headers["Authorization"] = "Bearer " + os.environ["MCPG_TEST_BEARER"]
    if headers or os.environ.get("MCPG_TEST_CA"):
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        verify = True
        if os.environ.get("MCPG_TEST_CA"):
            verify = ssl.create_default_context(cafile=os.environ["MCPG_TEST_CA"])
        http = httpx2.AsyncClient(
            headers=headers, verify=verify, timeout=httpx2.Timeout(30, read=300)
        )
        target = streamable_http_client(url, http_client=http)
        # A transport object has no URL to key the response cache on.
        extra["cache"] = None
    async with Client(target, mode=mode, read_timeout_seconds=60, **callbacks, **extra) as c:
        s = c.session
        report["protocol_version"] = c.protocol_version
        report["era"] = "modern" if getattr(s, "discover_result", None) else "legacy"
        info = c.server_info
        report["server"] = info.name if info else None
        caps = c.server_capabilities
        report["tools"] = [t.name for t in await all_pages(c.list_tools, "tools")]
        report["prompts"] = (
            [p.name for p in await all_pages(c.list_prompts, "prompts")] if caps.prompts else []
        )
        report["resources"] = (
            [str(r.uri) for r in await all_pages(c.list_resources, "resources")]
            if caps.resources
            else []
        )
        report["templates"] = (
            [t.uri_template for t in await all_pages(c.list_resource_templates, "resource_templates")]
            if caps.resources
            else []
        )
        report["calls"] = []
        for call in plan.get("calls", []):
            try:
                r = await c.call_tool(call["name"], call.get("arguments", {}))
                report["calls"].append(
                    {"name": call["name"], "is_error": bool(r.is_error), "text": text_of(r.content)}
                )
            except Exception as e:  # the report carries the failure; the test decides
                report["calls"].append({"name": call["name"], "exception": repr(e)})
        report["prompts_got"] = []
        for p in plan.get("prompts", []):
            try:
                g = await c.get_prompt(p["name"], p.get("arguments", {}))
                report["prompts_got"].append(
                    {"name": p["name"], "messages": len(g.messages),
                     "text": text_of([m.content for m in g.messages])}
                )
            except Exception as e:
                report["prompts_got"].append({"name": p["name"], "exception": repr(e)})
        report["reads"] = []
        for uri in plan.get("reads", []):
            try:
                r = await c.read_resource(uri)
                report["reads"].append({"uri": uri, "text": text_of(r.contents)})
            except Exception as e:
                report["reads"].append({"uri": uri, "exception": repr(e)})
        if "listen" in plan:
            spec = plan["listen"]
            events = []
            async with c.listen(resource_subscriptions=spec.get("resource_subscriptions", [])) as sub:
                report["listen_honored"] = list(sub.honored.resource_subscriptions or [])
                if "trigger" in spec:
                    await c.call_tool(spec["trigger"]["name"], spec["trigger"].get("arguments", {}))
                with anyio.move_on_after(30):
                    async for ev in sub:
                        events.append({"type": type(ev).__name__, "uri": getattr(ev, "uri", None)})
                        if len(events) >= spec.get("events", 1):
                            break
            report["listen_events"] = events
    print(json.dumps(report))


try:
    anyio.run(main)
except BaseException:
    traceback.print_exc()
    sys.exit(1)
