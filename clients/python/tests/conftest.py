"""Fixtures for the Python SDK's tests: a real `baton serve`
(tests/support/baton_server.py) and clients of it, one per agent."""

from __future__ import annotations

import pathlib
import sys
import uuid
from typing import Callable, Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from baton import Client  # noqa: E402
from baton_server import BatonServer  # noqa: E402


@pytest.fixture(scope="session")
def baton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatonServer]:
    root = tmp_path_factory.mktemp("baton")
    server = BatonServer(root / "data", root / "serve.log")
    yield server
    server.stop()


@pytest.fixture
def agent(baton: BatonServer) -> Callable[[str], Client]:
    """`agent("alice")`: a client of the test server calling as that agent."""
    return lambda name: Client(baton.url, agent=name)


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}/"
