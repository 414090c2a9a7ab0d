"""Fixtures for testing Baton's MCP server with the official MCP Python SDK.

A real `baton serve` (tests/support/baton_server.py) runs on a free
loopback port with a temporary data directory; `baton mcp --url ...` is
started by the SDK's stdio client, and `/mcp` is reached with its
streamable HTTP client. Everything waits with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "support"))
from baton_server import BATON_BIN, BatonServer, free_port  # noqa: E402,F401

TRANSPORTS = ["stdio", "http"]


@pytest.fixture(scope="session")
def baton(tmp_path_factory: pytest.TempPathFactory) -> BatonServer:
    root = tmp_path_factory.mktemp("baton")
    server = BatonServer(root / "data", root / "serve.log")
    yield server
    server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio_params(url: str, *extra: str, agent: str | None = None) -> StdioServerParameters:
    args = ["mcp", "--url", url, *extra]
    if agent is not None:
        args += ["--agent", agent]
    return StdioServerParameters(
        command=BATON_BIN,
        args=args,
        env={"BATON_LOG": os.environ.get("BATON_LOG", "warn,baton_mcp=info")},
    )


@contextlib.asynccontextmanager
async def connect(baton: BatonServer, transport: str, *extra: str, agent: str | None = None) -> AsyncIterator[Client]:
    """An MCP client session to Baton over `transport` (stdio or http)."""
    if transport == "stdio":
        server: Any = stdio_params(baton.url, *extra, agent=agent)
    else:
        server = baton.mcp_url
    async with Client(server, read_timeout_seconds=60) as client:
        yield client


class ToolError(Exception):
    def __init__(self, envelope: dict[str, Any], text: str) -> None:
        super().__init__(text)
        self.envelope = envelope
        self.text = text
        self.code = envelope["error"]["code"]
        self.error = envelope["error"]


async def call(client: Client, tool: str, **arguments: Any) -> tuple[dict[str, Any], str]:
    """Calls a tool; returns (envelope, text), whether it failed or not."""
    result = await client.call_tool(tool, arguments)
    envelope = result.structured_content
    assert isinstance(envelope, dict), f"{tool}: no structured content: {result}"
    text = result.content[0].text
    assert result.is_error == (not envelope["ok"]), f"{tool}: isError disagrees with the envelope: {result}"
    # The second text block is the same envelope, for clients that show text only.
    assert json.loads(result.content[1].text) == envelope
    return envelope, text


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Calls a tool that must succeed; returns its `result`."""
    envelope, text = await call(client, tool, **arguments)
    assert envelope["ok"], f"{tool}({arguments}) failed: {text}"
    return envelope["result"]


async def fails(client: Client, tool: str, **arguments: Any) -> ToolError:
    """Calls a tool that must fail with a tool error; returns the error."""
    envelope, text = await call(client, tool, **arguments)
    assert not envelope["ok"], f"{tool}({arguments}) should have failed: {text}"
    return ToolError(envelope, text)
