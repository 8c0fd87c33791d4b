"""Hostile input: how long refusing it takes and how much memory it costs, and how fast the API
answers while 200 slow clients hold connections open.

The reliability tests (tests/reliability/) prove *that* each hostile input is refused and that
searches are answered under a slowloris attack; the time and memory limits live here, where a
busy machine makes a run slower but cannot fail CI:

    .venv/bin/python -m bench.hostile                      # everything, with the default limits
    .venv/bin/python -m bench.hostile --no-slowloris       # refusals only (seconds)

Each refusal runs in a fresh Python process, which reports its wall time and its peak-RSS
growth (``ru_maxrss`` after minus before), so one case's peak cannot hide another's. Without
``--data-dir`` the slowloris run builds a data dir from the real PMC figures as bench/soak.py
does. Exits 1 when a limit is exceeded; writes ``bench/results/hostile.json``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``figsearch`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, print_figures, write_result  # noqa: E402
from figsearch.netutil import free_port  # noqa: E402

CASES = ("billion_laughs", "png_bomb", "zip_bomb", "many_members", "external_dtd")
#: default limits: seconds to refuse, and peak-RSS growth (MiB) while refusing
MAX_REFUSAL_S = 2.0
MAX_REFUSAL_RSS_MB = {"billion_laughs": 50.0, "png_bomb": 100.0}
MAX_SLOWLORIS_S = 3.0


# -- one refusal, in its own process --------------------------------------------------------------
def _prepare(case: str, tmp: Path) -> Callable[[], None]:
    """Build the hostile input of ``case`` (not measured); return the refusal (measured)."""
    from figsearch.imaging import ImageError, open_image
    from indexer.jats import JatsError, parse_article
    from indexer.readers import InputError, read_units
    from tests.reliability import hostile

    def expect(errors: tuple[type[Exception], ...], call: Callable[[], object]) -> Callable[[], None]:
        def refuse() -> None:
            try:
                call()
            except errors:
                pass
        return refuse

    if case == "billion_laughs":
        utf8 = hostile.billion_laughs()
        utf16 = utf8.decode().replace('<?xml version="1.0"?>',
                                      '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16")
        return expect((JatsError,), lambda: [parse_article(utf8), parse_article(utf16)])
    if case == "png_bomb":
        bomb = hostile.real_png_bomb(12_000)
        return expect((ImageError,), lambda: open_image(bomb))
    if case in ("zip_bomb", "many_members"):
        members = ([("a.nxml", hostile.mini_article()), ("f1.jpg", b"\x00" * 60_000_000)]
                   if case == "zip_bomb" else
                   [("a.nxml", hostile.mini_article())] + [(f"d/{i}.txt", b"") for i in range(10_050)])
        path = tmp / f"{case}.zip"
        path.write_bytes(hostile.zip_bytes(members))
        return expect((InputError,), lambda: list(read_units(path)))
    doc = (f'<?xml version="1.0"?><!DOCTYPE article SYSTEM "http://127.0.0.1:{free_port()}/x.dtd">'
           "<article/>").encode()
    return expect((JatsError,), lambda: parse_article(doc))


def _child(case: str) -> None:
    """Body of the per-case process: prepare, then measure only the refusal; print JSON."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        refuse = _prepare(case, Path(tmp))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        refuse()
        seconds = time.perf_counter() - t0
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"seconds": round(seconds, 4), "rss_growth_mb": round(grown / 1024, 1)}))


def measure_refusal(case: str) -> dict[str, float]:
    """Wall time and peak-RSS growth of refusing ``case``, in a fresh process."""
    run = subprocess.run([sys.executable, "-m", "bench.hostile", "--child", case], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"case {case} failed: {run.stderr[-2000:]}")
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


# -- slowloris --------------------------------------------------------------------------------
def _slow_client(port: int, stop: threading.Event, opened: list[int]) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    opened.append(1)
    try:
        for byte in b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
            if stop.is_set():
                break
            sock.sendall(bytes([byte]))
            time.sleep(0.5)
    except OSError:
        pass
    finally:
        sock.close()


def slowloris(base_url: str, clients: int = 200, searches: int = 30) -> dict[str, Any]:
    """Search latency while ``clients`` slow connections dribble their headers."""
    port = int(base_url.rsplit(":", 1)[1])
    stop, opened = threading.Event(), []
    threads = [threading.Thread(target=_slow_client, args=(port, stop, opened), daemon=True)
               for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)
    latencies = []
    try:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            for i in range(searches):
                t0 = time.perf_counter()
                http.get("/v1/search", params={"q": f"kinase pathway {i}", "k": 5}).raise_for_status()
                latencies.append(time.perf_counter() - t0)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    latencies.sort()
    return {"slowloris_open": len(opened), "slowloris_max_s": round(latencies[-1], 3),
            "slowloris_median_s": round(latencies[len(latencies) // 2], 3)}


def run_slowloris(data_dir: Path | None, model: str, clients: int) -> dict[str, Any]:
    from bench.soak import build_data_dir, start_server, wait_ready

    tmp = tempfile.TemporaryDirectory(prefix="figsearch-hostile-") if data_dir is None else None
    data = data_dir or Path(tmp.name)  # type: ignore[union-attr]
    try:
        if not (data / "indexes" / "current").exists():
            build_data_dir(data, model)
        port = free_port()
        proc = start_server(data, model, port, subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            return slowloris(f"http://127.0.0.1:{port}", clients)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        if tmp is not None:
            tmp.cleanup()


# -- main ---------------------------------------------------------------------------------------
def check_limits(figures: dict[str, Any], max_s: float, max_slowloris_s: float) -> list[str]:
    """The limits exceeded by ``figures``, in words."""
    over = [f"{case}: refused in {figures[f'{case}_s']} s (limit {max_s} s)"
            for case in CASES if f"{case}_s" in figures and figures[f"{case}_s"] > max_s]
    over += [f"{case}: peak RSS grew {figures[f'{case}_rss_growth_mb']} MiB (limit {limit} MiB)"
             for case, limit in MAX_REFUSAL_RSS_MB.items()
             if figures.get(f"{case}_rss_growth_mb", 0) > limit]
    if figures.get("slowloris_max_s", 0) > max_slowloris_s:
        over.append(f"slowloris: slowest search {figures['slowloris_max_s']} s "
                    f"(limit {max_slowloris_s} s)")
    return over


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--no-slowloris", action="store_true", help="refusals only")
    p.add_argument("--slow-clients", type=int, default=200, help="slow connections held open")
    p.add_argument("--model", default="figclip-mini", help="model of the slowloris server")
    p.add_argument("--data-dir", type=Path, default=None, help="data dir for the slowloris server")
    p.add_argument("--max-refusal-s", type=float, default=MAX_REFUSAL_S)
    p.add_argument("--max-slowloris-s", type=float, default=MAX_SLOWLORIS_S)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    figures: dict[str, Any] = {}
    for case in CASES:
        measured = measure_refusal(case)
        figures[f"{case}_s"] = measured["seconds"]
        figures[f"{case}_rss_growth_mb"] = measured["rss_growth_mb"]
    if not args.no_slowloris:
        figures.update(run_slowloris(args.data_dir, args.model, args.slow_clients))
    over = check_limits(figures, args.max_refusal_s, args.max_slowloris_s)
    params = {"cases": ",".join(CASES), "slowloris": not args.no_slowloris,
              "slow_clients": args.slow_clients, "max_refusal_s": args.max_refusal_s,
              "max_slowloris_s": args.max_slowloris_s}
    print_figures("hostile", figures)
    path = write_result("hostile", params, figures)
    for line in over:
        print(f"over the limit: {line}", file=sys.stderr)
    print(f"hostile: {len(CASES)} refusals measured"
          + (f", slowloris with {figures['slowloris_open']} slow clients" if "slowloris_open" in figures else "")
          + f"; {len(over)} limits exceeded; wrote {path}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
