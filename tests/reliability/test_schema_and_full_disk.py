"""The OpenAPI schema states the limits the server enforces; a full disk gives a message.

Both were found by this suite (see RELIABILITY.md): the schema used to advertise requests the
server refused (k, offset, q, figure types, batch queries), and `figsearch index` used to end
in a traceback on ENOSPC.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from figsearch.index import current_version_dir

from .servers import REPO, copy_data_dir
from .test_api_schemathesis import ALL_CHECKS, _run_operation


# Clients generated from the schema (and schemathesis' positive_data_acceptance check) must not
# be told a request is valid and then get an error: the schema states settings.max_k,
# settings.max_offset, settings.max_query_chars and that q is not blank.
@pytest.mark.parametrize("params", [
    {"q": ""}, {"q": "   "}, {"q": "x" * 600},
    {"q": "kinase", "k": 1000}, {"q": "kinase", "offset": 100_000},
])
def test_schema_valid_search_requests_are_accepted(default_api, params):
    spec = httpx.get(f"{default_api}/openapi.json").json()
    declared = {p["name"]: p["schema"] for p in spec["paths"]["/v1/search"]["get"]["parameters"]}
    valid = True
    for name, value in params.items():
        schema = declared[name]
        if isinstance(value, int):
            valid &= value <= schema.get("maximum", value)
        else:
            valid &= schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9)
            valid &= not (schema.get("pattern") and not value.strip())
    r = httpx.get(f"{default_api}/v1/search", params=params)
    if valid:
        assert r.status_code == 200, (
            f"schema-valid request {params} refused with {r.status_code}: {r.text[:200]}")
    else:  # the schema now states the limit: a clear 4xx is right
        assert r.status_code in (400, 422)


@pytest.mark.slow
def test_schemathesis_positive_data_acceptance(default_api):
    """schemathesis' positive_data_acceptance check alone, positive mode, every operation."""
    import schemathesis
    from schemathesis import GenerationMode

    builtin = next(c for c in ALL_CHECKS if c.__name__ == "positive_data_acceptance")

    def positive_data_acceptance(ctx, response, case):
        # One rule JSON Schema cannot state: year_from <= year_to across two fields. The
        # server answers it with a 400 that says so, which is what a user needs.
        if response.status_code == 400 and "is after year_to" in response.text:
            return None
        return builtin(ctx, response, case)

    check = [positive_data_acceptance]
    schema = schemathesis.openapi.from_url(f"{default_api}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label == "POST /v1/search/image":
            # Any bytes are a schema-valid upload, but only decodable images are accepted (the
            # issue asks for a 4xx on non-images); no schema can state "a decodable image".
            continue
        try:
            _run_operation(operation, GenerationMode.POSITIVE, default_api, checks=check)
        except Exception as exc:  # collect all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)


# `figsearch index` on a full disk: the failed write surfaces as OSError (numpy) or RuntimeError
# (faiss); expected: exit 1 with "figsearch index: ... <the reason>", `current` untouched.
# No privileges needed: the command runs under RLIMIT_FSIZE (see test_faults.file_size_limit).
# "build": set when the index files are written - the store was written before, as on a disk
# that fills up while the new version is written; 4 KiB lets every buffered write through and
# fails only when index.faiss is closed (a failure faiss's own writer used to print and ignore;
# a write failing mid-file is test_faults.test_full_disk_during_index_build_keeps_current).
# "start": from the start, so that the store's own writes (embedding cache, figure types) fail.
INDEX_ON_A_FULL_DISK = """
import resource, signal, sys
import indexer.indexing as indexing
from figsearch.cli import main

where, limit, argv, build = sys.argv[1], int(sys.argv[2]), sys.argv[3:], indexing.build_version

def fill_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def build_on_a_full_disk(*args, **kwargs):
    fill_disk()
    return build(*args, **kwargs)

if where == "start":
    fill_disk()
else:
    indexing.build_version = build_on_a_full_disk
sys.exit(main(argv))
"""


@pytest.mark.parametrize("where, limit_bytes", [("build", 4096), ("start", 16 * 1024)])
def test_full_disk_cli_index_reports_cleanly(small_index_data_dir, tiny_model_dir, tmp_path,
                                             where, limit_bytes):
    """`figsearch index` whose index files or store cannot be written in full, failing at
    different files: exit 1 with a message naming the failed write (no traceback), `current`
    untouched."""
    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    old = current_version_dir(data / "indexes").name
    env = {**os.environ, "FIGSEARCH_MODEL": str(tiny_model_dir), "FIGSEARCH_DEVICE": "cpu",
           "FIGSEARCH_NUM_WORKERS": "0"}
    run = subprocess.run(
        [sys.executable, "-c", INDEX_ON_A_FULL_DISK, where, str(limit_bytes), "index", "--data-dir",
         str(data), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    err = run.stderr
    assert current_version_dir(data / "indexes").name == old, "current moved"
    assert "Traceback" not in err, err[-3000:]
    assert run.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("figsearch index:"), last
    assert last.endswith("; the current index is unchanged"), last
    if where == "build":
        assert "file too large" in last.lower(), last
    print(f"\nfigsearch index on a full disk ({where}, files limited to {limit_bytes} B): "
          f"{last[:200]}")
