"""Where a proxy's CPU time goes: record it with py-spy under load, summarize the samples.

`python -m loadtests.bench --profile` records each proxy under test during an extra run (not one of
the measured runs: sampling costs a little) and summarizes it here. On its own:

    python -m loadtests.profile loadtests/results/profile-gateway-aiohttp-<stamp>.txt

Each sample is charged to the innermost frame of the proxy's own code (`gateway/` or
`loadtests/passthrough.py`), libraries below it included, so "AiohttpClient.send 30%" means 30% of
the samples were inside that function or something it called. Samples with no own frame are the
HTTP server (uvicorn) and the event loop itself (uvloop's C code and the socket system calls, which
py-spy shows as time in `Runner.run`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

OWN = ("gateway/", "loadtests/passthrough.py")
_LOCATION = re.compile(r" \(([^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r"^.*?/(?:site-packages|python3\.\d+)/")


def py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(__file__).resolve().parents[1] / ".venv/bin/py-spy"] if p.exists()), None
    )


def record(pid: int, seconds: float, output: Path, cpu: int | None, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` (without pausing it) into a collapsed-stacks file; wait() on the result."""
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    argv = [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(output)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _frame(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame such as `Forward.__call__ (gateway/forward.py:83)`."""
    found = _LOCATION.search(frame)
    if not found:
        return frame, ""
    return frame[: found.start()], _SITE.sub("", found.group(1))


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of the samples per own-code function (inclusive of libraries below it) and per library."""
    own: Counter[str] = Counter()
    own_self: Counter[str] = Counter()
    below: defaultdict[str, Counter[str]] = defaultdict(Counter)
    leaf_library: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        leaf_library[_library(frames[-1][1], frames[-1][0])] += n
        # Frames up to the event loop's entry are the process's startup code, there in every sample.
        loop = [
            i for i, (function, file) in enumerate(frames) if function == "Runner.run" or file.startswith("uvloop/")
        ]
        if loop and loop[-1] + 1 < len(frames):
            frames = frames[loop[-1] + 1 :]
        elif loop:
            own["event loop: uvloop C code and socket syscalls"] += n
            continue
        mine = [i for i, (_, file) in enumerate(frames) if file.startswith(OWN)]
        if mine:
            function, file = frames[mine[-1]]
            key = f"{function} ({file})"
            rest = frames[mine[-1] + 1 :]
            if rest:
                below[key][f"{rest[0][0]} ({rest[0][1]})"] += n
            else:
                own_self[key] += n
        elif any(file.startswith("uvicorn/") for _, file in frames):
            key = "uvicorn HTTP server, outside the app"
        else:
            key = f"{_library(frames[0][1], frames[0][0])} code run by the event loop (callbacks, its own tasks)"
            below[key][f"{frames[0][0]} ({frames[0][1]})"] += n
        own[key] += n

    def share(n: int) -> float:
        return round(n / total, 4) if total else 0.0

    return {
        "samples": total,
        "by_own_function": [
            {
                "function": key,
                "share": share(n),
                "self_share": share(own_self[key]),
                "calls_into": [{"function": f, "share": share(m)} for f, m in below[key].most_common(4)],
            }
            for key, n in own.most_common(top)
        ],
        "by_library_self": [{"library": lib, "share": share(n)} for lib, n in leaf_library.most_common(top)],
    }


def _library(file: str, function: str) -> str:
    if not file:
        return function or "?"
    if file.startswith(OWN):
        return file
    if file.startswith("asyncio/"):
        return "asyncio (timeouts, tasks)" if function != "Runner.run" else "event loop (uvloop C, syscalls)"
    return file.split("/", 1)[0].removesuffix(".py")


def render(summary: dict[str, Any], cpu_us_per_request: float | None = None) -> str:
    def cost(share: float) -> str:
        return f" ~{share * cpu_us_per_request:4.0f} us/req" if cpu_us_per_request else ""

    lines = [f"{summary['samples']} samples; by innermost own-code function (libraries below it included):"]
    for row in summary["by_own_function"]:
        lines.append(f"  {row['share']:6.1%}{cost(row['share'])}  {row['function']}")
        for callee in row["calls_into"]:
            if callee["share"] >= 0.005:
                lines.append(f"          {callee['share']:6.1%}  -> {callee['function']}")
    lines.append("by library of the innermost frame (self time):")
    for row in summary["by_library_self"]:
        lines.append(f"  {row['share']:6.1%}{cost(row['share'])}  {row['library']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Summarize a py-spy raw (collapsed stacks) profile of a proxy.")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--us-per-request", type=float, help="CPU microseconds per request, to show costs")
    args = parser.parse_args()
    print(render(summarize(args.file, args.top), args.us_per_request))


if __name__ == "__main__":
    main()
