"""A local S3 API server holding the PMC Cloud sample (tests, benchmarks, trying it out).

``python -m indexer.s3_sample --port 5055`` starts moto's S3 server on 127.0.0.1, loads
``../shared/data/pmc-cloud/bucket-day1`` into the bucket ``pmc-oa-opendata`` (``--day 2`` then
copies ``day2-overlay`` over it) and serves until Ctrl-C; point figsearch at it with
``--endpoint-url http://127.0.0.1:5055``. :class:`S3TestServer` wraps moto's WSGI app in a
small layer that logs every request (method and path) and can answer a path's first request
with 503, so tests count what was downloaded and see botocore retry. Needs ``moto[server]``
(the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from figsearch.netutil import free_port

DEFAULT_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pmc-cloud"


class S3TestServer:
    """moto's S3 server on loopback with a request log and first-request failures."""

    def __init__(self, port: int | None = None) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.requests: list[tuple[str, str]] = []  # (method, path incl. query)
        self.fail_first: set[str] = set()  # paths whose first GET answers 503
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            method = environ.get("REQUEST_METHOD", "")
            query = environ.get("QUERY_STRING", "")
            with self._lock:
                self.requests.append((method, path + (f"?{query}" if query else "")))
                fail = method == "GET" and path in self.fail_first and path not in self._seen
                if method == "GET":
                    self._seen.add(path)
            if fail:
                start_response("503 Slow Down", [("Content-Type", "application/xml")])
                return [b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"]
            return moto_app(environ, start_response)

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.port = port or free_port()
        self.httpd = make_server("127.0.0.1", self.port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, bucket: str) -> list[str]:
        """Object keys GET from ``bucket`` (listings as ``?query``), in request order."""
        with self._lock:
            return [p[len(bucket) + 1:].lstrip("/") for m, p in self.requests if m == "GET"
                    and (p.startswith(f"/{bucket}/") or p.startswith(f"/{bucket}?"))]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(timeout=5)


def writer_client(endpoint_url: str) -> Any:
    """A signed client (dummy credentials) for loading the server; readers stay anonymous."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def create_public_bucket(client: Any, bucket: str) -> None:
    """Create ``bucket`` (if missing), readable and listable anonymously like the real one."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return
    client.create_bucket(Bucket=bucket)
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{bucket}/*"},
            {"Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
             "Resource": f"arn:aws:s3:::{bucket}"},
        ],
    }))


def load_folder(client: Any, bucket: str, folder: Path) -> int:
    """Upload every file under ``folder`` as ``bucket/<relative path>``; returns the count."""
    create_public_bucket(client, bucket)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:  # moto answers one PUT in tens of ms
        list(pool.map(lambda p: client.put_object(
            Bucket=bucket, Key=p.relative_to(folder).as_posix(), Body=p.read_bytes()), files))
    return len(files)


def main(argv: list[str] | None = None) -> int:
    """Serve the sample until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--day", type=int, choices=(1, 2), default=1)
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--bucket", default="pmc-oa-opendata")
    args = parser.parse_args(argv)
    server = S3TestServer(args.port)
    client = writer_client(server.url)
    n = load_folder(client, args.bucket, args.sample / "bucket-day1")
    if args.day == 2:
        n += load_folder(client, args.bucket, args.sample / "day2-overlay")
    print(f"s3://{args.bucket} (day {args.day}, {n} objects) at {server.url}; Ctrl-C stops",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
