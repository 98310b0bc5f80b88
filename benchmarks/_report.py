"""Shared helpers for benchmark scripts: timing medians, the table, BENCHMARKS.md and --json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="cut-down case, under a minute; a smoke run, so BENCHMARKS.md is left as is")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    return p


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    from detseg.engine.summary import median_seconds
    return median_seconds(fn, repeats, warmup)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda: where both sides run (CUDA: timed with CUDA events, synchronised)")


def device_time(device, fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """``median_time`` on the CPU; on a CUDA device the median of CUDA-event intervals, each
    taken after the GPU finished all earlier work, so queued kernels are counted where they run."""
    import torch
    if torch.device(device).type != "cuda":
        return median_time(fn, repeats, warmup)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def device_label(device) -> str:
    """'' on the CPU; ' (CUDA, <GPU name>)' on a GPU: section titles and names keep them apart."""
    import torch
    dev = torch.device(device)
    return "" if dev.type != "cuda" else f" (CUDA, {torch.cuda.get_device_name(dev)})"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name and whether it runs bfloat16 natively (AVX512-BF16 / AMX) or has AVX2
    only: timings differ between the two kinds of machine these benchmarks run on."""
    try:
        info = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return platform.processor() or "CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    kind = ("AMX" if "amx_tile" in flags else "AVX512-BF16" if "avx512_bf16" in flags
            else "AVX2 only" if "avx2" in flags else "no AVX2")
    return f"{name} ({kind})"


def machine_key() -> str:
    """The hardware a figure was measured on (architecture, CPU and its kind, cores): what a
    stored run must share with a new one to sit in the same table."""
    return f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} cores"


def machine() -> str:
    import torch
    return (f"{machine_key()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def command_line() -> str:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join(["python", script, *sys.argv[1:]])


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md, written atomically."""
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    section = (f"{begin}\n## {title}\n\nCommand: `{command_line()}`  \nMachine: {machine()}\n\n"
               f"{body}\n{end}")
    text = open(BENCHMARKS_MD, encoding="utf-8").read() if os.path.exists(BENCHMARKS_MD) else \
        "# Benchmarks\n\nEach section is written by the script named in its command line.\n"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + section + post
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = BENCHMARKS_MD + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, BENCHMARKS_MD)


def records_figures(args) -> bool:
    """Whether this run may replace recorded figures (BENCHMARKS.md, results files).

    A --quick run is a smoke check of the script: its figures must never replace measured ones.
    """
    return not (args.quick or args.no_write)


def finish(args, name: str, title: str, body: str, figures: dict) -> None:
    print(body)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    if records_figures(args):
        write_section(name, title, body)
    else:
        print(f"(BENCHMARKS.md not updated: {'--quick' if args.quick else '--no-write'})")


def run_tool(tool: str, args: list[str], what: str) -> float:
    """Run ``tools/<tool>`` with ``args`` in a fresh process, as a user would (progress bars off).

    Returns:
        wall seconds of the whole run.
    Raises:
        RuntimeError naming ``what`` with the end of stderr when the tool fails.
    """
    import subprocess
    cmd = [sys.executable, os.path.join(ROOT, "tools", tool), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "DETSEG_NO_PROGRESS": "1"},
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{r.stderr[-3000:]}")
    return wall


def rerun_flags(out: str) -> list[str]:
    """``--overwrite`` when ``out`` already holds a training run (by tools/train.py's manifest: an
    earlier call's ``--keep-run`` folder), so that the rerun trains that seed again from scratch;
    nothing otherwise, so that tools/train.py refuses a folder of the user's files in one line
    instead of writing its run in among them."""
    from detseg.engine.run_folder import TOOL
    from detseg.outputs import read_manifest
    manifest = read_manifest(out)  # None for a missing folder, too
    return ["--overwrite"] if manifest is not None and manifest.get("tool") == TOOL else []


def run_train(config: str, overrides: list[str], out: str) -> tuple[list[dict], float]:
    """Run tools/train.py as a user would into ``out`` (``rerun_flags``: an earlier run there is
    trained again from scratch, a folder of anything else is refused).

    Returns:
        (the run's metrics.jsonl records, wall seconds of the whole run).
    Raises:
        RuntimeError with the end of stderr when the run fails.
    """
    wall = run_tool("train.py", ["--config", config, "--output-dir", out, *rerun_flags(out), *overrides], config)
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f], wall
