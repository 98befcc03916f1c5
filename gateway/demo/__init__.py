"""Demo model servers: real HTTP processes for `make demo`, the integration tests and the benchmark.

One server speaks the OpenAI API (chat completions, completions, embeddings) and the KServe v2 / Open
Inference Protocol with deterministic toy models, echoes requests, and takes failure injections from
tests through `POST /control`. Modules, one concern each:

- `settings`: `DemoSettings`, the CLI flags;
- `answers`: the toy models (answers, embeddings, a classifier);
- `behaviour`: `Behaviour` (the control body) and the `Controller` that picks each request's behaviour;
- `stats`: the `Recorder` of what the server saw (`GET /control/stats`);
- `responses`, `faults`, `sse`: JSON answers, transport faults, event streams;
- `openai`, `kserve`: the endpoints;
- `app`: `build_app(settings)`; `server`: `start(settings)`; `cli`: `main(argv)`.
"""

from gateway.demo.app import build_app
from gateway.demo.behaviour import Behaviour
from gateway.demo.cli import main
from gateway.demo.server import RunningServer, start
from gateway.demo.settings import DemoSettings

__all__ = ["Behaviour", "DemoSettings", "RunningServer", "build_app", "main", "start"]
