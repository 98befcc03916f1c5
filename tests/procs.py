"""Real processes for integration tests: demo model servers and the gateway on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    """A child process whose stdout/stderr lines are collected in the background."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(
        cls, argv: list[str], ready: str, timeout_s: float = 15.0, env: dict[str, str] | None = None
    ) -> tuple[Proc, re.Match[str]]:
        popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        proc = cls(popen)
        found: list[re.Match[str]] = []
        seen = threading.Event()
        pattern = re.compile(ready)

        def pump() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                proc.lines.append(line.rstrip("\n"))
                if not found and (match := pattern.search(line)):
                    found.append(match)
                    seen.set()
            seen.set()

        proc.reader = threading.Thread(target=pump, daemon=True)
        proc.reader.start()
        seen.wait(timeout_s)
        if not found:
            proc.kill()
            raise RuntimeError(f"{argv} did not print {ready!r} in {timeout_s}s:\n" + "\n".join(proc.lines))
        return proc, found[0]

    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout_s: float = 10.0) -> int:
        code = self.popen.wait(timeout_s)
        self._close_output()
        return code

    def _close_output(self) -> None:
        if self.reader is not None:
            self.reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_output()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        self._close_output()


@dataclass
class DemoServer:
    name: str
    url: str
    proc: Proc

    def control(self, **behaviour: Any) -> None:
        httpx.post(f"{self.url}/control", json=behaviour, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/control/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/control/stats", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def start_demo(name: str, *flags: str) -> DemoServer:
    proc, match = Proc.start(
        [sys.executable, "-m", "gateway.demo", "--host", "127.0.0.1", "--port", "0", "--name", name, *flags],
        ready=r"listening on (http://\S+)",
    )
    return DemoServer(name, match.group(1), proc)


@dataclass
class Gateway:
    url: str
    admin_url: str
    proc: Proc
    config_path: Path

    def write_config(self, config: dict[str, Any]) -> None:
        _write_yaml(self.config_path, config)


def _write_yaml(path: Path, config: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)


def start_gateway(config: dict[str, Any], directory: Path, env: dict[str, str] | None = None) -> Gateway:
    config = {"listen": {"port": 0}, "admin": {"port": 0}, **config}
    config["listen"] = {"port": 0, **config["listen"]}
    config["admin"] = {"port": 0, **config["admin"]}
    path = directory / "gateway.yaml"
    _write_yaml(path, config)
    proc, match = Proc.start(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        ready=r"gateway listening on (http://\S+) admin (http://\S+)",
        env=env,
    )
    return Gateway(match.group(1), match.group(2), proc, path)


def wait_until(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def route(name: str, path: str, *backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": path}, "backends": list(backends), **extra}


def iter_lines(response: httpx.Response) -> Iterator[str]:
    yield from response.iter_lines()
