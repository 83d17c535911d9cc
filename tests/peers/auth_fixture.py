"""What the access-control tests need around mcpg, on one loopback port (printed on stdout):

GET  /jwks.json   the JSON Web Key Set of a test issuer (an RSA key made at start)
GET  /token?...   a JWT signed by that issuer: sub, aud, iss, exp_in (seconds from now, may be
                  negative), scope, groups (comma-separated), rogue=1 (signed by a key that is
                  not in the set, under the same key id)
POST /mcp         a minimal Streamable HTTP MCP server (2025-11-25, JSON answers) whose one
                  tool, `headers`, answers with the HTTP headers it received, so a test can see
                  what mcpg sends upstream

usage: auth_fixture.py
"""

import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

KID = "test-key-1"
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
JWKS = json.dumps({"keys": [jwk]}).encode()


def mint(q):
    one = lambda k, d=None: q.get(k, [d])[0]
    now = int(time.time())
    claims = {
        "iss": one("iss", "http://issuer.test"),
        "sub": one("sub", "alice"),
        "aud": one("aud", "http://mcpg.test/mcp"),
        "iat": now,
        "exp": now + int(one("exp_in", "300")),
    }
    if one("scope"):
        claims["scope"] = one("scope")
    if one("groups"):
        claims["groups"] = one("groups").split(",")
    signer = rogue if one("rogue") else key
    return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": KID})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlparse(self.path)
        if u.path == "/jwks.json":
            return self.reply(200, JWKS)
        if u.path == "/token":
            return self.reply(200, mint(parse_qs(u.query)).encode(), "text/plain")
        if u.path == "/mcp":
            return self.reply(405, b"", extra=[("Allow", "POST")])
        return self.reply(404, b"{}")

    def do_DELETE(self):
        return self.reply(200, b"")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        msg = json.loads(self.rfile.read(n))
        if "id" not in msg:
            return self.reply(202, b"")
        method, rid = msg.get("method"), msg["id"]
        if method == "initialize":
            result = {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "header-upstream", "version": "1"},
            }
            return self.reply(
                200,
                json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode(),
                extra=[("Mcp-Session-Id", uuid.uuid4().hex)],
            )
        if method == "tools/list":
            result = {"tools": [{"name": "headers", "inputSchema": {"type": "object"}}]}
        elif method == "tools/call":
            seen = {k.lower(): v for k, v in self.headers.items()}
            result = {"content": [{"type": "text", "text": json.dumps(seen)}]}
        elif method == "ping":
            result = {}
        else:
            err = {"code": -32601, "message": f"Method not found: {method}"}
            body = json.dumps({"jsonrpc": "2.0", "id": rid, "error": err}).encode()
            return self.reply(200, body)
        self.reply(200, json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode())


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
