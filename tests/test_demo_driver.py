"""`gateway demo` end to end: demo servers, the gateway, traffic and the report, on free ports."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.procs import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_demo_runs_traffic_and_prints_a_report(tmp_path: Path) -> None:
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    demo["listen"]["port"], demo["admin"]["port"] = free_port(), free_port()
    ports = {name: free_port() for name in ("9001", "9002", "9003")}
    for route in demo["routes"]:
        for backend in route["backends"]:
            for old, new in ports.items():
                backend["url"] = backend["url"].replace(f":{old}", f":{new}")
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--config", str(config), "--duration", "2", "--concurrency", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "gateway listening on" in out
    assert "requests in" in out
    assert "status codes: 200:" in out
    for route in ("chat", "embeddings", "credit-model"):
        assert route in out
    assert "Traceback" not in out + done.stderr
