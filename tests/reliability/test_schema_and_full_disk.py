"""The OpenAPI schema states the limits the server enforces; a full disk gives a message.

Both were found by this suite (see RELIABILITY.md): the schema used to advertise requests the
server refused (k, offset, q, figure types, batch queries), and `figsearch index` used to end
in a traceback on ENOSPC.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from figsearch.index import current_version_dir

from .servers import copy_data_dir
from .test_api_schemathesis import ALL_CHECKS, _run_operation
from .test_faults import small_tmpfs


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


# `figsearch index` on a full disk: ENOSPC surfaces as OSError from the lock file or np.save;
# expected: exit 1 with "figsearch index: ... No space left on device", `current` untouched.


def _tmpfs_used_kb(path: Path) -> int:
    out = subprocess.run(["df", "-k", "--output=used", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("spare_pages", [0, 2, 4])
def test_full_disk_cli_index_reports_cleanly(small_index_data_dir, tiny_model_dir, tmp_path,
                                             monkeypatch, capsys, spare_pages):
    """`figsearch index` with an index dir that fills up at different files of the build: exit 1
    with a message naming the full disk (no traceback), `current` untouched."""
    import shutil

    from figsearch.cli import main as figsearch

    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    saved = tmp_path / "indexes-saved"
    shutil.move(data / "indexes", saved)
    with small_tmpfs(data / "indexes", 64 * 1024) as mounted:
        if not mounted:
            pytest.fail("needs a small tmpfs (root); see test_full_disk_during_index_build_keeps_current")
        for entry in saved.iterdir():
            if entry.is_symlink():
                os.symlink(os.readlink(entry), data / "indexes" / entry.name)
            elif entry.is_dir():
                shutil.copytree(entry, data / "indexes" / entry.name)
        old = current_version_dir(data / "indexes").name
        size = _tmpfs_used_kb(data / "indexes") + 4 * spare_pages
        subprocess.run(["mount", "-o", f"remount,size={size}k", str(data / "indexes")], check=True)
        monkeypatch.setenv("FIGSEARCH_MODEL", str(tiny_model_dir))
        monkeypatch.setenv("FIGSEARCH_DEVICE", "cpu")
        monkeypatch.setenv("FIGSEARCH_NUM_WORKERS", "0")
        try:
            code = figsearch(["index", "--data-dir", str(data), "--no-progress"])
            escaped = None
        except OSError as exc:  # a traceback instead of a message
            code, escaped = None, exc
        err = capsys.readouterr().err
        assert current_version_dir(data / "indexes").name == old, "current moved"
        assert escaped is None, (
            f"`figsearch index` crashed with an uncaught {escaped!r} instead of exiting 1 with a "
            "message (indexer/indexing.py command() catches RuntimeError/ValueError, not OSError)")
        assert code == 1, err[-2000:]
        assert "no space left on device" in err.lower(), err[-2000:]
        assert current_version_dir(data / "indexes").name == old
    print(f"\nfigsearch index on a full disk ({spare_pages} spare pages): {err.strip().splitlines()[-1][:200]}")
