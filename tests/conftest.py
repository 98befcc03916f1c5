from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import DemoServer, Gateway, start_demo, start_gateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def demo_v1() -> Iterator[DemoServer]:
    server = start_demo("v1", "--model", "demo-v1")
    yield server
    server.proc.stop()


@pytest.fixture(scope="session")
def demo_v2() -> Iterator[DemoServer]:
    server = start_demo("v2", "--model", "demo-v2")
    yield server
    server.proc.stop()


@pytest.fixture
def demos(demo_v1: DemoServer, demo_v2: DemoServer) -> Iterator[tuple[DemoServer, DemoServer]]:
    """Both shared demo servers, with their failure behaviour reset before and after the test."""
    demo_v1.reset()
    demo_v2.reset()
    yield demo_v1, demo_v2
    demo_v1.reset()
    demo_v2.reset()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        gateway = start_gateway(config, tmp_path, env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.proc.stop()


@pytest.fixture(scope="module")
def contract_gateway(demo_v1: DemoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway with the openai.chat contract, shared by the fuzz test's many examples."""
    route = {
        "name": "chat",
        "match": {"path": "/v1/chat/completions"},
        "contract": {"request": "openai.chat", "response": "openai.chat"},
        "backends": [{"name": "v1", "url": demo_v1.url}],
    }
    gateway = start_gateway({"routes": [route]}, tmp_path_factory.mktemp("contract"))
    yield gateway
    gateway.proc.stop()
