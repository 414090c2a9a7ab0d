"""Fixtures for testing Baton's MCP server with the official MCP Python SDK.

A real `baton serve` runs on a free loopback port with a temporary data
directory; `baton mcp --url ...` is started by the SDK's stdio client, and
`/mcp` is reached with its streamable HTTP client. The binary is
`target/debug/baton` (build it with `cargo build -p baton-cli`) unless
`BATON_BIN` names another. Everything waits with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

REPO = pathlib.Path(__file__).resolve().parents[2]
BATON_BIN = os.environ.get("BATON_BIN", str(REPO / "target" / "debug" / "baton"))
STARTUP_TIMEOUT_S = 30.0

TRANSPORTS = ["stdio", "http"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BatonServer:
    """One `baton serve` process on a free port."""

    def __init__(self, data_dir: pathlib.Path, log_path: pathlib.Path) -> None:
        if not os.path.exists(BATON_BIN):
            raise RuntimeError(f"{BATON_BIN} does not exist: run `cargo build -p baton-cli` or set BATON_BIN")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mcp_url = f"{self.url}/mcp"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [BATON_BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"baton serve exited with {self.process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"baton serve did not answer /healthz within {STARTUP_TIMEOUT_S} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """One call to the HTTP API (for checks the MCP tools are not for)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Baton-Agent", "pytest-admin")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


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
