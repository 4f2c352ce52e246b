"""A real S3-protocol server on loopback for tests and demos (moto's server mode).

Tests of the S3 paths must talk S3 over HTTP exactly as obstore and
icechunk do against AWS: signed requests, ``ListObjectsV2``, ranged
``GET``, ``If-Match`` on ETags and conditional ``PUT``. ``moto[server]``
runs such a server in a thread of the test process; nothing is mocked
inside our code or the libraries. Requires the ``moto[server]`` test extra
(its absence is an ``ImportError``, so tests fail rather than skip).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tessera_vz.core.ports import fresh_port
from tessera_vz.testing.service import Service

logger = logging.getLogger(__name__)

#: Credentials the server accepts (moto accepts any); distinctive so tests can
#: prove they never end up in a repository, a report or a log.
ACCESS_KEY = "AKIATESSERAVZTEST"
SECRET_KEY = "tessera-vz-secret-never-written"
REGION = "us-east-1"


class MotoS3(Service):
    """moto's S3 server on ``host:port`` (a free port by default).

    Use as a context manager, or :meth:`start`/:meth:`stop`. :meth:`env`
    gives the ``AWS_*`` variables that point obstore, icechunk and the
    ``tessera-vz`` CLI (in this or a child process) at it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or fresh_port(host)
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        """``http://host:port`` of the server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoS3:
        """Start the server thread; returns ``self``."""
        from moto.server import ThreadedMotoServer

        # werkzeug logs one line per request at INFO; tests read stderr.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        logger.info("moto S3 server on %s", self.endpoint)
        return self

    def stop(self) -> None:
        """Stop the server (its buckets vanish with it)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def env(self, *, credentials: bool = True) -> dict[str, str]:
        """``AWS_*`` variables pointing every S3 client at this server."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if credentials:
            env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
            env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        return env

    def client(self) -> Any:
        """A boto3 S3 client of this server (boto3 comes with moto)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket (idempotent)."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)

    def make_public(self, bucket: str) -> None:
        """Let anyone list and read ``bucket`` unsigned, as the public TESSERA bucket does."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def upload_tree(self, root: str | Path, bucket: str, prefix: str = "") -> int:
        """Upload every file under ``root`` to ``s3://bucket/prefix/…``; returns the count."""
        root = Path(root)
        self.create_bucket(bucket)
        client = self.client()
        n = 0
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = "/".join(
                    p for p in (prefix.strip("/"), path.relative_to(root).as_posix()) if p
                )
                client.upload_file(str(path), bucket, key)
                n += 1
        return n

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under a prefix, read whole (for small test buckets only)."""
        client = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out
