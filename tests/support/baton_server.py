"""A real `baton serve` for the Python test suites (the MCP tests and the
Python SDK's): a free loopback port, a temporary data directory, and a
deadline on every wait. The binary is `target/debug/baton` (build it with
`cargo build -p baton-cli`) unless `BATON_BIN` names another.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parents[2]
BATON_BIN = os.environ.get("BATON_BIN", str(REPO / "target" / "debug" / "baton"))
STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BatonServer:
    """One `baton serve` process on a free port."""

    def __init__(self, data_dir: pathlib.Path, log_path: pathlib.Path, port: Optional[int] = None) -> None:
        """`port`: a port to serve on again (a restart); a free one if None."""
        if not os.path.exists(BATON_BIN):
            raise RuntimeError(f"{BATON_BIN} does not exist: run `cargo build -p baton-cli` or set BATON_BIN")
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mcp_url = f"{self.url}/mcp"
        self.log_path = log_path
        self._log = open(log_path, "ab")
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

    def api(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None) -> Any:
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
