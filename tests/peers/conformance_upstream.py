#!/usr/bin/env python3
"""The fixture server of the official MCP conformance suite, as a real upstream for mcpg tests.

The suite (`npx @modelcontextprotocol/conformance server --url URL ...`) does not ship a
server; it tests one that exposes a fixed set of tools, resources and prompts whose names,
arguments and outputs are described by the suite's scenarios. This file implements that
fixture from the scenario descriptions, on the PyPI `mcp` 2.3.0 low-level `Server`, so that:

  * it passes `conformance server --requirements 2025-11-25` and `--requirements 2026-07-28`
    on its own, and
  * mcpg can be put in front of it and run through the same suite.

One Streamable HTTP endpoint serves both protocol eras (the library routes on the
`MCP-Protocol-Version` header):

  2025-11-25 (legacy, `initialize` + `Mcp-Session-Id`): server-to-client requests
      (sampling, elicitation, roots) go out on the tool call's SSE stream, logging/setLevel,
      ping, resources/subscribe and unsubscribe exist, list_changed goes to the GET stream.
  2026-07-28 (modern, stateless): the server asks for input by returning
      `{"resultType": "input_required", "inputRequests": {...}, "requestState": ...}`
      and the client retries with `inputResponses`; `requestState` is sealed (AES-GCM, a
      per-process key) by the library, so tampered state is rejected with -32602; list
      and read results carry `ttlMs`/`cacheScope`; list_changed reaches
      `subscriptions/listen` streams.

Every tool is listed in both eras (in one fixed order). Tools that need input from the
client adapt to the era: the same `test_sampling` sends `sampling/createMessage` to a
2025 client and returns an `input_required` result to a 2026 client, and the
`test_input_required_result_*` tools send real requests to a 2025 client. This makes the
fixture usable behind a gateway that translates between eras.

Not implemented: the Tasks extension (SEP-2663, not scored by the suite).

Usage:
    conformance_upstream.py --port N [--host 127.0.0.1] [--no-resumability]   # HTTP, http://HOST:N/mcp
    conformance_upstream.py --stdio                       # newline-delimited JSON-RPC on stdio
By default the HTTP server keeps an in-memory event store, so 2025-11-25 SSE streams start
with a priming event (`id:`, empty `data:`, `retry: 1000`) and can be resumed with
Last-Event-ID (needed by the suite's `server-sse-polling` scenario and `test_reconnection`);
`--no-resumability` turns that off.
With --port, once the socket is bound it prints exactly one line to stdout,
`listening on http://HOST:PORT/mcp` (PORT is the real port, so --port 0 works), and
prints nothing else there; uvicorn's own messages go to stderr at warning level.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp_types import INVALID_PARAMS, MISSING_REQUIRED_CLIENT_CAPABILITY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata

# Logging, sampling and roots are deprecated at 2026-07-28; the fixture still serves them to
# 2025 clients on purpose.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

SERVER_NAME = "mcp-conformance-fixture"
SERVER_VERSION = "1.0.0"

# Test data the suite's scenarios use: a 1x1 PNG and a tiny WAV file.
IMG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}

Ctx = ServerRequestContext[Any, Any]


# --------------------------------------------------------------------------------------------
# Small helpers


def is_modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def result(*content: dict[str, Any], is_error: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"content": list(content)}
    if is_error:
        out["isError"] = True
    return out


def client_caps(ctx: Ctx) -> types.ClientCapabilities:
    return ctx.session.client_capabilities or types.ClientCapabilities()


def request_meta(ctx: Ctx) -> dict[str, Any]:
    meta = (ctx.params or {}).get("_meta")
    return meta if isinstance(meta, dict) else {}


def elicit(message: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {"type": "object", "properties": properties, "required": required},
        },
    }


def sample(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": text(prompt)}], "maxTokens": max_tokens},
    }


LIST_ROOTS: dict[str, Any] = {"method": "roots/list", "params": {}}


# --------------------------------------------------------------------------------------------
# Asking the client for input, in either era.
#
# A handler calls `await ask(ctx, {key: request, ...})` and gets `{key: response, ...}`
# (`Inputs(ctx).ask(...)`, called once per round, for a multi-round exchange).
#   2025: each request is sent to the client on the current request's stream and awaited.
#   2026: answers come from `inputResponses` (plus answers carried in `requestState` from
#         earlier rounds); if some are missing, `ask` raises NeedInput and the handler's
#         result becomes an `input_required` result asking for the missing ones.


class NeedInput(Exception):
    def __init__(self, payload: dict[str, Any]):
        super().__init__("input required")
        self.payload = payload


_RESULT_TYPES: dict[str, type[types.Result]] = {
    "sampling/createMessage": types.CreateMessageResult,
    "elicitation/create": types.ElicitResult,
    "roots/list": types.ListRootsResult,
}

# The member a response to each kind of request must have (checked on 2026 retries).
_RESPONSE_MARKER = {"sampling/createMessage": "content", "elicitation/create": "action", "roots/list": "roots"}


def _state(ctx: Ctx) -> dict[str, Any]:
    """The plaintext `requestState` this fixture minted earlier ({} on round one).

    The library's RequestStateBoundary has already verified and unsealed it.
    """
    raw = (ctx.params or {}).get("requestState")
    if not isinstance(raw, str):
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise MCPError(code=INVALID_PARAMS, message="requestState is not one this server minted")
    return state


def _input_responses(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params or {}
    if "inputResponses" not in params:
        return {}
    responses = params["inputResponses"]
    if not isinstance(responses, dict):
        raise MCPError(code=INVALID_PARAMS, message="inputResponses must be an object keyed by input request id")
    return responses


async def _send_to_client(ctx: Ctx, request: dict[str, Any]) -> dict[str, Any]:
    typed = types.server_request_adapter.validate_python(request)
    response = await ctx.session.send_request(
        typed,
        _RESULT_TYPES[request["method"]],
        metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
    )
    return response.model_dump(by_alias=True, mode="json", exclude_none=True)


class Inputs:
    """Gets the client's answers to input requests for one tool call or prompt (see above)."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.gathered: dict[str, dict[str, Any]] = {}  # answers this invocation already used

    async def ask(
        self, requests: dict[str, dict[str, Any]], *, stateful: bool = False, tag: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Return `{key: response}` for `requests`, or raise NeedInput (2026 only).

        `stateful`: the `input_required` result carries a `requestState` holding `tag` and
        the answers gathered so far, so a later round need not repeat them.
        """
        ctx = self.ctx
        if not is_modern(ctx):
            answers = {key: await _send_to_client(ctx, req) for key, req in requests.items()}
            self.gathered.update(answers)
            return answers

        state = _state(ctx)
        known: dict[str, Any] = {**state.get("answers", {}), **self.gathered}
        for key, response in _input_responses(ctx).items():
            if key not in requests:
                continue  # not asked for here: ignored
            marker = _RESPONSE_MARKER[requests[key]["method"]]
            if not isinstance(response, dict) or marker not in response:
                raise MCPError(
                    code=INVALID_PARAMS,
                    message=f"inputResponses[{key!r}] is not a response to {requests[key]['method']}",
                )
            known[key] = response
        missing = {key: req for key, req in requests.items() if key not in known}
        if not missing:
            answers = {key: known[key] for key in requests}
            self.gathered.update(answers)
            return answers
        payload: dict[str, Any] = {"resultType": "input_required", "inputRequests": missing}
        if stateful:
            carried = {**self.gathered, **{k: v for k, v in known.items() if k in requests}}
            payload["requestState"] = json.dumps({"tag": tag, "answers": carried}, separators=(",", ":"))
        raise NeedInput(payload)


async def ask(
    ctx: Ctx, requests: dict[str, dict[str, Any]], *, stateful: bool = False, tag: str | None = None
) -> dict[str, dict[str, Any]]:
    """One-shot `Inputs(ctx).ask(...)`."""
    return await Inputs(ctx).ask(requests, stateful=stateful, tag=tag)


def elicited(response: dict[str, Any], field: str, default: str = "") -> str:
    content = response.get("content")
    value = content.get(field, default) if isinstance(content, dict) else default
    return str(value)


def sampled_text(response: dict[str, Any]) -> str:
    content = response.get("content")
    if isinstance(content, list):
        content = content[0] if content else {}
    return str(content.get("text", "")) if isinstance(content, dict) else ""


# --------------------------------------------------------------------------------------------
# Tools

ToolFn = Callable[[Ctx, dict[str, Any]], Awaitable[dict[str, Any]]]
TOOLS: list[tuple[dict[str, Any], ToolFn]] = []
SUBSCRIPTIONS = InMemorySubscriptionBus()


def tool(name: str, description: str, input_schema: dict[str, Any] | None = None) -> Callable[[ToolFn], ToolFn]:
    def register(fn: ToolFn) -> ToolFn:
        TOOLS.append(({"name": name, "description": description, "inputSchema": input_schema or NO_ARGS}, fn))
        return fn

    return register


@tool("test_simple_text", "Returns a simple text response (callable without an arguments member)")
async def _simple_text(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result(text("This is a simple text response for testing."))


@tool("test_image_content", "Returns a 1x1 PNG image")
async def _image(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result({"type": "image", "data": IMG, "mimeType": "image/png"})


@tool("test_audio_content", "Returns a tiny WAV audio clip")
async def _audio(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result({"type": "audio", "data": WAV, "mimeType": "audio/wav"})


@tool("test_embedded_resource", "Returns an embedded text resource")
async def _embedded(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result(
        {
            "type": "resource",
            "resource": {
                "uri": "test://embedded-resource",
                "mimeType": "text/plain",
                "text": "This is an embedded resource content.",
            },
        }
    )


@tool("test_multiple_content_types", "Returns text, image and resource content together")
async def _mixed(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result(
        text("Multiple content types test:"),
        {"type": "image", "data": IMG, "mimeType": "image/png"},
        {
            "type": "resource",
            "resource": {
                "uri": "test://mixed-content-resource",
                "mimeType": "application/json",
                "text": json.dumps({"test": "data", "value": 123}),
            },
        },
    )


@tool("test_tool_with_logging", "Sends three log notifications while it runs")
async def _with_logging(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    for i, message in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
        if i:
            await anyio.sleep(0.05)
        await ctx.session.send_log_message("info", message, related_request_id=ctx.request_id)
    return result(text("Tool with logging executed successfully"))


@tool("test_error_handling", "Always returns a tool error result (isError: true)")
async def _error(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result(text("This tool intentionally returns an error for testing"), is_error=True)


@tool("test_tool_with_progress", "Sends progress notifications 0, 50, 100 of 100 for the request's progressToken")
async def _with_progress(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    for i, progress in enumerate((0, 50, 100)):
        if i:
            await anyio.sleep(0.05)
        await ctx.session.report_progress(progress, 100, f"Completed step {i + 1} of 3")
    token = request_meta(ctx).get("progressToken")
    return result(text(f"Progress reported for token {token}" if token is not None else "No progressToken given"))


@tool(
    "test_sampling",
    "Asks the client to sample an LLM completion of the prompt",
    {"type": "object", "properties": {"prompt": {"type": "string", "description": "Prompt to sample"}},
     "required": ["prompt"]},
)
async def _sampling(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    answers = await ask(ctx, {"sample": sample(str(args.get("prompt", "")), 100)})
    return result(text(f"LLM response: {sampled_text(answers['sample'])}"))


@tool(
    "test_elicitation",
    "Asks the user (elicitation) for a response",
    {"type": "object", "properties": {"message": {"type": "string", "description": "Message to show"}},
     "required": ["message"]},
)
async def _elicitation(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    request = elicit(
        str(args.get("message", "")),
        {"response": {"type": "string", "description": "User's response"}},
        ["response"],
    )
    r = (await ask(ctx, {"response": request}))["response"]
    return result(text(f"User response: action={r.get('action')}, content={json.dumps(r.get('content'))}"))


@tool("test_elicitation_sep1034_defaults", "Elicits a form whose fields carry default values (SEP-1034)")
async def _elicitation_defaults(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    request = elicit(
        "Please review and update the form fields with defaults",
        {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
        [],
    )
    r = (await ask(ctx, {"form": request}))["form"]
    return result(text(f"Elicitation completed: action={r.get('action')}, content={json.dumps(r.get('content'))}"))


@tool("test_elicitation_sep1330_enums", "Elicits a form with every enum schema variant (SEP-1330)")
async def _elicitation_enums(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    request = elicit(
        "Please select options from the enum fields",
        {
            "untitledSingle": {
                "type": "string",
                "description": "Select one option",
                "enum": ["option1", "option2", "option3"],
            },
            "titledSingle": {
                "type": "string",
                "description": "Select one option with titles",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"},
                ],
            },
            "legacyEnum": {
                "type": "string",
                "description": "Select one option (legacy)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Select multiple options",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
            },
            "titledMulti": {
                "type": "array",
                "description": "Select multiple options with titles",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"},
                    ]
                },
            },
        },
        [],
    )
    r = (await ask(ctx, {"form": request}))["form"]
    return result(text(f"Elicitation completed: action={r.get('action')}, content={json.dumps(r.get('content'))}"))


JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


@tool("json_schema_2020_12_tool", "Has a JSON Schema 2020-12 inputSchema that must reach clients verbatim",
      JSON_SCHEMA_2020_12)
async def _json_schema(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result(text(json.dumps(args, sort_keys=True)))


@tool(
    "test_mcp_param_header",
    "Echoes its region argument, which 2026 clients mirror into the Mcp-Param-Region header (SEP-2243)",
    {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}, "required": ["region"]},
)
async def _param_header(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    return result(text(f"region={args.get('region')}"))


@tool("test_reconnection", "Closes its own SSE stream mid-call (2025-11-25); the result is replayed on resume")
async def _reconnection(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    # SEP-1699 polling: the client sees the POST stream end without a response and
    # reconnects with GET + Last-Event-ID; the event store replays what it missed.
    # `close_sse_stream` is only offered on 2025-11-25 sessions with an event store.
    if ctx.close_sse_stream is not None:
        await anyio.sleep(0.05)
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)
    return result(text("Reconnection test completed"))


# ---- tools the 2026-07-28 scenarios need (listed in both eras)


@tool("test_missing_capability", "Needs the client's sampling capability; fails with -32021 without it")
async def _missing_capability(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    if client_caps(ctx).sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="MissingRequiredClientCapabilityError",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return result(text("Success"))


@tool("test_streaming_elicitation", "Streams a progress notification (never a server-to-client request), then completes")
async def _streaming_elicitation(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    await ctx.session.report_progress(1, 1, "Streaming")
    return result(text("Streaming complete"))


@tool("test_logging_tool", "Logs at debug and info; on 2026-07-28 only if the request's _meta opts in to a log level")
async def _logging_tool(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    # The library drops entries the request did not opt in to (2026-07-28 per-request logLevel).
    await ctx.session.send_log_message("debug", "Logging tool: debug entry", related_request_id=ctx.request_id)
    await ctx.session.send_log_message("info", "Logging tool: info entry", related_request_id=ctx.request_id)
    return result(text("Logging evaluated"))


@tool("test_trigger_tool_change", "Announces tools/list_changed (listen streams; the 2025 GET stream)")
async def _trigger_tools(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    await SUBSCRIPTIONS.publish(ToolsListChanged())
    if not is_modern(ctx):
        await ctx.session.send_tool_list_changed()
    return result(text("Mutation triggered"))


@tool("test_trigger_resource_update", "Announces that test://watched-resource changed (listen streams; 2025 subscribers)")
async def _trigger_resource_update(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    await SUBSCRIPTIONS.publish(ResourceUpdated(uri="test://watched-resource"))
    if not is_modern(ctx):
        await ctx.session.send_resource_updated("test://watched-resource")
    return result(text("Update triggered"))


@tool("test_trigger_prompt_change", "Announces prompts/list_changed (listen streams; the 2025 GET stream)")
async def _trigger_prompts(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    await SUBSCRIPTIONS.publish(PromptsListChanged())
    if not is_modern(ctx):
        await ctx.session.send_prompt_list_changed()
    return result(text("Mutation triggered"))


@tool("test_input_required_result_elicitation", "Asks for the user's name (elicitation), then greets them")
async def _ir_elicitation(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    r = await ask(ctx, {"user_name": elicit("What is your name?", {"name": {"type": "string"}}, ["name"])})
    return result(text(f"Hello, {elicited(r['user_name'], 'name', 'there')}!"))


@tool("test_input_required_result_sampling", "Asks the client to sample an answer, then returns it")
async def _ir_sampling(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    r = await ask(ctx, {"capital_question": sample("What is the capital of France?", 100)})
    return result(text(f"Sampling result: {sampled_text(r['capital_question'])}"))


@tool("test_input_required_result_list_roots", "Asks the client for its roots, then counts them")
async def _ir_roots(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    roots = (await ask(ctx, {"client_roots": LIST_ROOTS}))["client_roots"].get("roots") or []
    names = ", ".join(str(r.get("uri")) for r in roots if isinstance(r, dict))
    return result(text(f"Found {len(roots)} root(s): {names}"))


@tool("test_input_required_result_request_state", "Round-trips an opaque requestState; answers 'state-ok'")
async def _ir_request_state(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    tag = "request-state-v1"
    await ask(ctx, {"confirm": elicit("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])}, stateful=True, tag=tag)
    if is_modern(ctx) and _state(ctx).get("tag") != tag:
        raise MCPError(code=INVALID_PARAMS, message="requestState missing or not minted for this tool")
    return result(text("Confirmed: state-ok"))


@tool("test_input_required_result_multiple_inputs", "Asks for a name, a sampled greeting and the roots at once")
async def _ir_multiple(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    r = await ask(
        ctx,
        {
            "user_name": elicit("What is your name?", {"name": {"type": "string"}}, ["name"]),
            "greeting": sample("Generate a greeting", 50),
            "client_roots": LIST_ROOTS,
        },
        stateful=True,
        tag="multiple-inputs",
    )
    roots = r["client_roots"].get("roots") or []
    return result(
        text(f"Name: {elicited(r['user_name'], 'name')}; Greeting: {sampled_text(r['greeting'])}; Roots: {len(roots)}")
    )


@tool("test_input_required_result_multi_round", "Asks for a name, then (in a second round) a favourite colour")
async def _ir_multi_round(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    step1 = elicit("Step 1: What is your name?", {"name": {"type": "string"}}, ["name"])
    step2 = elicit("Step 2: What is your favorite color?", {"color": {"type": "string"}}, ["color"])
    inputs = Inputs(ctx)
    name = elicited((await inputs.ask({"step1": step1}, stateful=True, tag="round1"))["step1"], "name")
    # Round two carries step1's answer in its requestState.
    color = elicited((await inputs.ask({"step2": step2}, stateful=True, tag="round2"))["step2"], "color")
    return result(text(f"Multi-round complete for {name} who likes {color}"))


@tool("test_input_required_result_tampered_state", "Issues an integrity-protected requestState; rejects tampering")
async def _ir_tampered(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    # Integrity is enforced before this runs: a modified requestState fails the library's
    # AES-GCM unseal and the request is answered with -32602.
    tag = "tamper-check"
    await ask(ctx, {"confirm": elicit("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])}, stateful=True, tag=tag)
    if is_modern(ctx) and _state(ctx).get("tag") != tag:
        raise MCPError(code=INVALID_PARAMS, message="requestState missing or not minted for this tool")
    return result(text("State verified: state-ok"))


@tool("test_input_required_result_capabilities", "Asks only for the kinds of input the client declared it supports")
async def _ir_capabilities(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    caps = client_caps(ctx)
    requests: dict[str, dict[str, Any]] = {}
    if caps.sampling is not None:
        requests["capability_sample"] = sample("Say hello", 20)
    if caps.elicitation is not None:
        requests["capability_elicit"] = elicit("What is your name?", {"name": {"type": "string"}}, ["name"])
    if caps.roots is not None:
        requests["capability_roots"] = LIST_ROOTS
    if not requests:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="MissingRequiredClientCapabilityError",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    answers = await ask(ctx, requests)
    return result(text(f"Received input for: {', '.join(sorted(answers))}"))


TOOLS_BY_NAME = {spec["name"]: fn for spec, fn in TOOLS}


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> dict[str, Any]:
    return {"tools": [spec for spec, _ in TOOLS]}


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> dict[str, Any]:
    fn = TOOLS_BY_NAME.get(params.name)
    if fn is None:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")
    try:
        return await fn(ctx, params.arguments or {})
    except NeedInput as need:
        return need.payload


# --------------------------------------------------------------------------------------------
# Resources

RESOURCES = [
    {"uri": "test://static-text", "name": "static-text", "title": "Static Text Resource",
     "description": "A static text resource", "mimeType": "text/plain"},
    {"uri": "test://static-binary", "name": "static-binary", "title": "Static Binary Resource",
     "description": "A static binary resource (1x1 PNG)", "mimeType": "image/png"},
    {"uri": "test://watched-resource", "name": "watched-resource", "title": "Watched Resource",
     "description": "A resource clients can subscribe to", "mimeType": "text/plain"},
]
RESOURCE_TEMPLATES = [
    {"uriTemplate": "test://template/{id}/data", "name": "template", "title": "Template Resource",
     "description": "A resource template with an id parameter", "mimeType": "application/json"},
]
STATIC_CONTENTS = {
    "test://static-text": {"mimeType": "text/plain", "text": "This is the content of the static text resource."},
    "test://static-binary": {"mimeType": "image/png", "blob": IMG},
    "test://watched-resource": {"mimeType": "text/plain", "text": "Watched resource content"},
}
TEMPLATE_PREFIX, TEMPLATE_SUFFIX = "test://template/", "/data"


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> dict[str, Any]:
    return {"resources": RESOURCES}


async def list_resource_templates(ctx: Ctx, params: types.PaginatedRequestParams | None) -> dict[str, Any]:
    return {"resourceTemplates": RESOURCE_TEMPLATES}


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> dict[str, Any]:
    uri = str(params.uri)
    if uri in STATIC_CONTENTS:
        return {"contents": [{"uri": uri, **STATIC_CONTENTS[uri]}]}
    if uri.startswith(TEMPLATE_PREFIX) and uri.endswith(TEMPLATE_SUFFIX):
        item_id = uri[len(TEMPLATE_PREFIX) : -len(TEMPLATE_SUFFIX)]
        if item_id and "/" not in item_id:
            body = {"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"}
            return {"contents": [{"uri": uri, "mimeType": "application/json", "text": json.dumps(body)}]}
    # 2026-07-28 (SEP-2164): -32602 with data.uri. 2025-11-25: -32002 "Resource not found".
    code = INVALID_PARAMS if is_modern(ctx) else -32002
    raise MCPError(code=code, message=f"Resource not found: {uri}", data={"uri": uri})


async def subscribe_resource(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


async def unsubscribe_resource(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


# --------------------------------------------------------------------------------------------
# Prompts

PROMPTS = [
    {"name": "test_simple_prompt", "description": "A simple prompt without arguments"},
    {"name": "test_prompt_with_arguments", "description": "A prompt with two required arguments",
     "arguments": [{"name": "arg1", "description": "First argument", "required": True},
                   {"name": "arg2", "description": "Second argument", "required": True}]},
    {"name": "test_prompt_with_embedded_resource", "description": "A prompt that embeds a resource",
     "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": True}]},
    {"name": "test_prompt_with_image", "description": "A prompt that includes an image"},
    {"name": "test_input_required_result_prompt",
     "description": "Asks the user for context (elicitation) before rendering"},
]


def user(content: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> dict[str, Any]:
    return {"prompts": PROMPTS}


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> dict[str, Any]:
    args = params.arguments or {}
    name = params.name
    if name == "test_simple_prompt":
        messages = [user(text("This is a simple prompt for testing."))]
    elif name == "test_prompt_with_arguments":
        for required in ("arg1", "arg2"):
            if required not in args:
                raise MCPError(code=INVALID_PARAMS, message=f"Missing required argument: {required}")
        messages = [user(text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
    elif name == "test_prompt_with_embedded_resource":
        if "resourceUri" not in args:
            raise MCPError(code=INVALID_PARAMS, message="Missing required argument: resourceUri")
        messages = [
            user({"type": "resource", "resource": {"uri": args["resourceUri"], "mimeType": "text/plain",
                                                   "text": "Embedded resource content for testing."}}),
            user(text("Please process the embedded resource above.")),
        ]
    elif name == "test_prompt_with_image":
        messages = [
            user({"type": "image", "data": IMG, "mimeType": "image/png"}),
            user(text("Please analyze the image above.")),
        ]
    elif name == "test_input_required_result_prompt":
        request = elicit("What context should the prompt use?", {"context": {"type": "string"}}, ["context"])
        try:
            answers = await ask(ctx, {"user_context": request})
        except NeedInput as need:
            return need.payload
        messages = [user(text(f"Prompt with context: {elicited(answers['user_context'], 'context')}"))]
    else:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {name}")
    description = next(p["description"] for p in PROMPTS if p["name"] == name)
    return {"description": description, "messages": messages}


# --------------------------------------------------------------------------------------------
# Completion and logging


COMPLETIONS = {("test_prompt_with_arguments", "arg1"): ["testValue1", "test-alpha", "test-beta"],
               ("test_prompt_with_arguments", "arg2"): ["testValue2"]}


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> dict[str, Any]:
    ref = params.ref
    key = (getattr(ref, "name", None) or getattr(ref, "uri", None), params.argument.name)
    values = [v for v in COMPLETIONS.get(key, []) if v.startswith(params.argument.value)]
    return {"completion": {"values": values, "total": len(values), "hasMore": False}}


async def set_logging_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


# --------------------------------------------------------------------------------------------
# Server assembly


class MemoryEventStore(EventStore):
    """Keeps the last `limit` SSE events of all 2025-11-25 sessions for Last-Event-ID resumption.

    With an event store the library starts every 2025-11-25 SSE stream with a priming event
    (an `id:` and empty `data:`, plus `retry:`), as SEP-1699 recommends.
    """

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self.events: OrderedDict[str, tuple[str, types.JSONRPCMessage | None]] = OrderedDict()
        self.counter = 0

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        self.counter += 1
        event_id = str(self.counter)
        self.events[event_id] = (stream_id, message)
        while len(self.events) > self.limit:
            self.events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        if last_event_id not in self.events:
            return None
        stream_id = self.events[last_event_id][0]
        after = False
        for event_id, (stream, message) in list(self.events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


class FixtureServer(Server[Any]):
    """Advertises tools/prompts listChanged to 2025 clients (the trigger tools send them)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(prompts_changed=True, tools_changed=True),
            experimental_capabilities,
            extensions,
        )


def complete_on_modern(handler: Callable[[Ctx, Any], Awaitable[Any]]) -> Callable[[Ctx, Any], Awaitable[Any]]:
    """Stamp `resultType: "complete"` on a 2026-07-28 dict result that has no resultType.

    The library validates handler results against the wire schema of the request's era,
    and the 2026-07-28 schema requires `resultType` (typed result models default it;
    plain dicts, as returned here, must carry it). 2025-11-25 results have no such field.
    """

    async def wrapped(ctx: Ctx, params: Any) -> Any:
        out = await handler(ctx, params)
        if is_modern(ctx) and isinstance(out, dict) and "resultType" not in out:
            out = {"resultType": "complete", **out}
        return out

    return wrapped


def build_server() -> FixtureServer:
    lists = CacheHint(ttl_ms=300_000, scope="public")
    w = complete_on_modern
    server = FixtureServer(
        SERVER_NAME,
        version=SERVER_VERSION,
        title="MCP conformance fixture",
        instructions="Fixture server for the MCP conformance suite (server mode).",
        cache_hints={
            "server/discover": lists,
            "tools/list": lists,
            "prompts/list": lists,
            "resources/list": lists,
            "resources/templates/list": lists,
            "resources/read": CacheHint(ttl_ms=60_000, scope="private"),
        },
        on_list_tools=w(list_tools),
        on_call_tool=w(call_tool),
        on_list_resources=w(list_resources),
        on_list_resource_templates=w(list_resource_templates),
        on_read_resource=w(read_resource),
        on_subscribe_resource=subscribe_resource,
        on_unsubscribe_resource=unsubscribe_resource,
        on_subscriptions_listen=ListenHandler(SUBSCRIPTIONS),
        on_list_prompts=w(list_prompts),
        on_get_prompt=w(get_prompt),
        on_completion=w(complete),
        on_set_logging_level=set_logging_level,
    )
    # Seal/verify requestState (2026-07-28) with a key that lives as long as this process.
    server.middleware.append(
        RequestStateBoundary(RequestStateSecurity.ephemeral(), default_audience=SERVER_NAME)
    )
    return server


async def serve_http(server: FixtureServer, host: str, port: int, resumable: bool) -> None:
    import uvicorn

    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        host=host,
        event_store=MemoryEventStore() if resumable else None,
        retry_interval=1000 if resumable else None,
    )
    http = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await http.serve()
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        while not http.started:
            await anyio.sleep(0.01)
        bound = http.servers[0].sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"listening on http://{shown}:{bound}/mcp", flush=True)


async def serve_stdio(server: FixtureServer) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--port", type=int, help="serve Streamable HTTP on this port (0 = any free port)")
    mode.add_argument("--stdio", action="store_true", help="serve on stdin/stdout")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument(
        "--no-resumability",
        action="store_true",
        help="HTTP: no event store, so no SSE priming events, retry field or Last-Event-ID replay (2025-11-25)",
    )
    args = parser.parse_args()
    server = build_server()
    if args.stdio:
        anyio.run(serve_stdio, server)
    else:
        try:
            anyio.run(serve_http, server, args.host, args.port, not args.no_resumability)
        except KeyboardInterrupt:
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()
