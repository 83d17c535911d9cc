"""The FastMCP proxy (PyPI `fastmcp`) in front of one upstream, for bench/run-other-gateways.

usage: fastmcp_proxy.py UPSTREAM_URL PORT
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp, proxying every request to UPSTREAM_URL.
"""

import sys

from fastmcp.server.server import create_proxy

proxy = create_proxy(sys.argv[1], name="fastmcp-proxy")
proxy.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
