"""An S3-compatible server for tests and benches: moto's server mode (``pip install 'moto[server]'``, in the
test extra), a real HTTP server process on 127.0.0.1 (a free port), reached by the real clients (pyarrow's
S3 filesystem, the AWS SDK inside it) through the standard AWS environment variables, as a store on S3 is
reached in production."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lineage_scanner.testing.local_cluster import free_port


class S3Server:
    """``with S3Server() as s3:``; ``s3.env`` holds what a process needs to reach it (endpoint, region and
    credentials: the secret key is a fresh canary a test can look for wherever it must not be)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.secret = f"canary-{secrets.token_hex(16)}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "lineage-test",
                    "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}  # never probe the instance metadata address
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> S3Server:
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto server did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.secret,
                                 endpoint_override=self.endpoint, region="us-east-1", allow_bucket_creation=True,
                                 request_timeout=30, connect_timeout=10)

    def bucket(self, name: str) -> str:
        self.filesystem().create_dir(name)
        return name

    def objects(self, prefix: str) -> dict[str, int]:
        """Every object under ``bucket[/prefix]``: key -> size."""
        import pyarrow.fs as pafs

        infos = self.filesystem().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        return {i.path: i.size for i in infos if i.type == pafs.FileType.File}

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(key) as f:
            return f.read()

    def apply(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """``env`` (default: this process's) with the server's variables."""
        return {**(os.environ if env is None else env), **self.env}
