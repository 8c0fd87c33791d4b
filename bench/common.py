"""Helpers shared by every bench script: machine info, package versions, result files, tables.

Run bench scripts from the repository root as modules (``.venv/bin/python -m bench.ann ...``)
and import these helpers with ``from bench.common import write_result, markdown_table``.
To also allow ``python bench/ann.py``, put this before that import (``bench`` has no
``__init__.py``; it is a namespace package)::

    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Each script ends with :func:`write_result`, which writes ``bench/results/<name>.json`` holding
``{"name", "timestamp", "params", "figures", "machine", "versions"}``. ``figures`` is a flat
dict of measured numbers (name -> number or short string) that ``bench/scale.py`` and
``bench/report.py`` read. Set ``FIGSEARCH_BENCH_RESULTS`` to write elsewhere (the smoke tests do,
so tiny runs never overwrite real results).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

#: distribution names whose versions go into every result (first installed name wins)
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu", "faiss"),
    "open_clip": ("open_clip_torch",),
    "numpy": ("numpy",),
}


def results_dir() -> Path:
    """Where results go: ``$FIGSEARCH_BENCH_RESULTS`` or ``bench/results`` (created)."""
    path = Path(os.environ.get("FIGSEARCH_BENCH_RESULTS") or BENCH_DIR / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpu_name() -> str | None:
    """The first CUDA device's name, or None (only asks torch if it is installed)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, RAM (GiB), GPU name (None without CUDA), OS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "ram_gb": _ram_gb(),
        "gpu": _gpu_name(),
        "os": platform.platform(),
    }


def package_versions() -> dict[str, str | None]:
    """Versions of python, torch, faiss, open_clip and numpy (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in PACKAGES.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def write_result(name: str, params: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write ``<results_dir>/<name>.json`` with params, figures, machine, versions, timestamp."""
    payload = {
        "name": name,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "figures": figures,
        "machine": machine_info(),
        "versions": package_versions(),
    }
    path = results_dir() / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def load_results(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """All ``*.json`` results in ``directory`` (default :func:`results_dir`) by name; bad files skipped."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((directory or results_dir()).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"warning: skipping unreadable result {path}", file=sys.stderr)
            continue
        if isinstance(data, dict):
            data = normalise_result(data, path.stem)
            data["_path"] = str(path)
            found[str(data["name"])] = data
    return found


def normalise_result(data: dict[str, Any], stem: str) -> dict[str, Any]:
    """A result in the standard shape; also accepts the ``{"benchmark", "when", "parameters",
    "results": [{"corpus", "cold": {...}, "warm": {...}}]}`` shape (bench/ingest.py), whose
    per-run numbers become figures named ``"<corpus> <run> <number>"``."""
    if "results" not in data or "figures" in data:
        data.setdefault("name", stem)
        return data
    figures: dict[str, Any] = {}
    for row in data.get("results") or []:
        for run, numbers in row.items():
            if isinstance(numbers, dict):
                for key, value in numbers.items():
                    figures[f"{row.get('corpus', '?')} {run} {key}"] = value
    machine = dict(data.get("machine") or {})
    machine.setdefault("cores", machine.get("cpu_count"))
    machine.setdefault("cpu", machine.get("processor") or "?")
    return {"name": data.get("benchmark") or stem, "timestamp": data.get("when", ""),
            "params": data.get("parameters") or {}, "figures": figures, "machine": machine,
            "versions": {"python": machine.get("python"), **(machine.get("versions") or {})}}


def format_value(value: Any) -> str:
    """Numbers with sensible precision; everything else as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.1f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table (cells formatted with :func:`format_value`, pipes escaped)."""
    def cell(v: Any) -> str:
        return format_value(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_figures(name: str, figures: dict[str, Any]) -> None:
    """Print a result's figures as a two-column markdown table (what every script ends with)."""
    print(f"## {name}\n")
    print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return out


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` as {field: kB} (Rss, Pss, Anonymous...); {} when the
    process is gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    return {k.strip(): int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines)}


def process_memory_mb() -> dict[str, float]:
    """This process's resident memory in MiB: all of it, its peak, and the part that is the
    process's own (anonymous: heap, models, codes read into RAM) apart from the memory-mapped
    index and store pages it touched (file-backed: page cache, shared with other workers and
    dropped under pressure)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss_mb": round(out.get("VmRSS", 0.0), 1),
            "peak_rss_mb": round(out.get("VmHWM", 0.0), 1),
            "rss_anon_mb": round(out.get("RssAnon", 0.0), 1),
            "rss_file_mb": round(out.get("RssFile", 0.0), 1)}
