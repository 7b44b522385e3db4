"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's ThreadedMotoServer.

The code under test talks to it over HTTP through pyarrow's S3 client, exactly as to AWS or MinIO;
nothing is mocked in-process. The server's endpoint reaches cueaudit the way a user's would: the
``AWS_ENDPOINT_URL`` environment variable (inherited by local Ray workers) plus dummy credentials.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata service for credentials


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>

    def make_bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, region="us-east-1", allow_bucket_creation=True,
                               access_key=ENV["AWS_ACCESS_KEY_ID"], secret_key=ENV["AWS_SECRET_ACCESS_KEY"])
        fs.create_dir(name)
        return f"s3://{name}"

    def upload(self, local: Path, uri: str) -> str:
        """Copy a local file or folder (recursively) to ``uri`` with the client under test."""
        from common.storage import as_path

        local = Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for f in files:
            dest = as_path(uri) if local.is_file() else as_path(uri) / f.relative_to(local).as_posix()
            dest.write_bytes(f.read_bytes())
        return uri


@contextmanager
def s3_server(own_process: bool = False) -> Iterator[S3Server]:
    """Start moto's server on a free loopback port with the environment pointed at it; stop it after.

    ``own_process``: run it as a separate ``python -m moto.server`` (benchmarks: a server in the
    driver's process would compete with the driver for the GIL), else in a thread of this process.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    if own_process:
        stop, endpoint = _start_process()
    else:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        stop, endpoint = server.stop, f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield S3Server(endpoint)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop()


def _start_process() -> tuple[Callable[[], None], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.2)

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=30)

    return stop, endpoint
