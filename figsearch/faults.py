"""Test-only fault injection: make the process SIGKILL itself at a named stage.

Set ``FIGSEARCH_FAULT_AT=<stage>`` (or ``<stage>@<n>`` to die on the n-th time the stage is
reached, counting from 1) and the process kills itself with SIGKILL when it reaches
:func:`maybe_crash` with that stage: no ``finally`` blocks, no atexit, no flushing - exactly what a
power cut or the OOM killer does. The reliability tests use it to prove that a crash at any
stage leaves the store and the index versions consistent and that a rerun completes.

Unset (the default), :func:`maybe_crash` costs one environment lookup.

Stages used by the pipeline (see tests/reliability/test_faults.py):
``ingest-article`` (after each article is committed), ``ingest-done``, ``embed-batch`` (after
each cached embedding batch), ``embed-done``, ``build-trained``, ``build-written``,
``build-renamed`` (version directory in place, ``current`` not yet switched),
``build-switched``, and ``build-applied`` in a delta build (:mod:`indexer.delta`: the image
index of the new version written into its temporary directory, captions not yet);
``keyword-batch`` (a batch of figures added to a new keyword index), ``keyword-deleted`` /
``keyword-committed`` (a keyword index update, before / after its commit);
``pmc-inventory-done`` (a PMC Cloud inventory run recorded as complete).
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "FIGSEARCH_FAULT_AT"
_seen: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    stage, _, nth = spec.partition("@")
    return stage, int(nth) if nth.isdigit() else 1


def maybe_crash(stage: str) -> None:
    """SIGKILL this process if ``FIGSEARCH_FAULT_AT`` names ``stage`` (and its count is reached)."""
    target = _target()
    if target is None or target[0] != stage:
        return
    _seen[stage] = _seen.get(stage, 0) + 1
    if _seen[stage] >= target[1]:
        print(f"fault injection: SIGKILL at stage {stage!r}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def build_hook(stage: str) -> None:
    """A ``hook`` for :func:`indexer.build.build_version`: its stages become ``build-<stage>``."""
    maybe_crash(f"build-{stage}")
