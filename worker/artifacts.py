"""One artifact store for checkpoints, adapters and other files a run or evaluation writes: a local folder by
default, or an S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...) named by an URL.

Plain boto3 and the standard library (no Django): the web side builds a store from its settings
(`apps/runs/artifacts.py`), a process outside Django from the same environment variables with `from_env`.

Keys are relative paths with ``/`` (``runs/12/checkpoints/checkpoint-40/adapter_model.safetensors``). A folder is
stored file by file with a ``.complete`` marker written last, so a reader never takes a half-uploaded folder.
Transient failures (connection refused, timeouts, 5xx) are retried with a growing pause; after the last try the
call raises `ArtifactStoreError` saying what was being stored and where. Every request has a connect and a read
timeout (FTSTUDIO_ARTIFACTS_CONNECT_TIMEOUT, FTSTUDIO_ARTIFACTS_READ_TIMEOUT) and the tries are bounded
(FTSTUDIO_ARTIFACTS_TRIES): a store that accepts connections and never answers fails the call in bounded time.
`wait_unless` runs a call while watching a cancel flag.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

COMPLETE = ".complete"


class ArtifactStoreError(RuntimeError):
    """The store refused or could not be reached; the message names what failed (and the variable to fix)."""


class ArtifactStoreConfigError(ArtifactStoreError):
    """The store is misconfigured (bad URL, wrong credentials, missing bucket): the process should not start."""


# A store that accepts connections and never answers must not hang a run: these bound every request.
CONNECT_TIMEOUT, READ_TIMEOUT, TRIES = 5.0, 30.0, 4


def timeouts(env: Mapping[str, str] | None = None) -> dict:
    """Connect and read timeouts (seconds) and tries of every store request, from the environment."""
    env = os.environ if env is None else env
    return {
        "connect_timeout": float(env.get("FTSTUDIO_ARTIFACTS_CONNECT_TIMEOUT") or CONNECT_TIMEOUT),
        "read_timeout": float(env.get("FTSTUDIO_ARTIFACTS_READ_TIMEOUT") or READ_TIMEOUT),
        "tries": int(env.get("FTSTUDIO_ARTIFACTS_TRIES") or TRIES),
    }


class StoreWaitStopped(Exception):
    """`wait_unless` stopped waiting for a store call because its ``should_stop`` said so."""


def wait_unless(call: Callable, should_stop: Callable[[], bool], poll: float = 1.0):
    """``call()`` on a helper thread, asking ``should_stop()`` every ``poll`` seconds while it runs: a cancel is seen
    while an upload waits on a slow store. Returns the call's result or raises its error, or `StoreWaitStopped`
    (the call is left to end on its own, within its timeouts)."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="artifact-store-call", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll)
        if thread.is_alive() and should_stop():
            raise StoreWaitStopped()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class LocalStore:
    """A folder on this node. With the media root as its folder (the default) files are already where they belong:
    storing a folder that lies inside it is a no-op."""

    url_scheme = "file"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def describe(self) -> str:
        return str(self.root)

    def is_remote(self) -> bool:
        return False

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ArtifactStoreError(f"artifact key {key!r} is outside the store {self.root}")
        return path

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactStoreConfigError(
                f"FTSTUDIO_ARTIFACTS_URL: cannot create the folder {self.root}: {exc}"
            ) from exc

    def put_dir(self, local: str | Path, key: str) -> None:
        target = self._path(key)
        local = Path(local).resolve()
        if local != target:
            shutil.copytree(local, target, dirs_exist_ok=True)
        (target / COMPLETE).write_text("")

    def get_dir(self, key: str, local: str | Path) -> Path:
        source, local = self._path(key), Path(local)
        if source.resolve() != local.resolve():
            shutil.copytree(source, local, dirs_exist_ok=True, ignore=shutil.ignore_patterns(COMPLETE))
        return local

    def complete_dirs(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in folder.iterdir() if (p / COMPLETE).is_file())

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def has_complete(self, key: str) -> bool:
        return (self._path(key) / COMPLETE).is_file()

    def put_file(self, local: str | Path, key: str) -> None:
        target = self._path(key)
        if Path(local).resolve() != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(local, partial)
            os.replace(partial, target)

    def open_file(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactStoreError(f"Nothing stored under {key} in {self.describe()}") from exc

    def file_exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_file(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """A bucket (and a key prefix in it) of an S3-compatible store, through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        tries: int = TRIES,
        pause: float = 0.5,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url, self.tries, self.pause, self.sleep = endpoint_url, tries, pause, sleep
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name=region or "us-east-1",
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},  # `_retry` is the one bounded retry
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                s3={"addressing_style": "path"},
            ),
        )

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") + where

    def is_remote(self) -> bool:
        return True

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, what: str, call: Callable):
        from botocore.exceptions import BotoCoreError, ClientError

        last: Exception | None = None
        for attempt in range(self.tries):
            try:
                return call()
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status and status < 500:
                    raise ArtifactStoreError(f"{what}: the store at {self.describe()} refused it ({exc})") from exc
                last = exc
            except (BotoCoreError, OSError) as exc:
                last = exc
            if attempt + 1 < self.tries:
                self.sleep(self.pause * 2**attempt)
        raise ArtifactStoreError(
            f"{what}: the store at {self.describe()} did not answer after {self.tries} tries "
            f"({type(last).__name__}: {last})"
        ) from last

    def check(self) -> None:
        """Can this process read and write the bucket? Raises ArtifactStoreConfigError naming the variable."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        except NoCredentialsError as exc:
            raise ArtifactStoreConfigError(
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set: the artifact store "
                f"{self.describe()} (FTSTUDIO_ARTIFACTS_URL) needs credentials."
            ) from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in {"NoSuchBucket", "404"}:
                raise ArtifactStoreConfigError(
                    f"FTSTUDIO_ARTIFACTS_URL names the bucket {self.bucket!r}, which does not exist at "
                    f"{self.endpoint_url or 'AWS'}: create it or fix the URL."
                ) from exc
            if status in {401, 403} or code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:
                raise ArtifactStoreConfigError(
                    f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY were refused by {self.endpoint_url or 'AWS'} for the "
                    f"bucket {self.bucket!r} ({code or status}): check the key pair and its rights on the bucket."
                ) from exc
            raise ArtifactStoreConfigError(
                f"FTSTUDIO_ARTIFACTS_URL: {self.describe()} answered {code or status}: {exc}"
            ) from exc
        except (BotoCoreError, OSError) as exc:
            raise ArtifactStoreConfigError(
                f"AWS_ENDPOINT_URL: the artifact store {self.describe()} cannot be reached ({exc})."
            ) from exc

    def put_dir(self, local: str | Path, key: str) -> None:
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != COMPLETE)
        # trainer_state.json is the last file the Trainer writes; keep it last here too, then the marker.
        files.sort(key=lambda p: p.name == "trainer_state.json")
        for path in files:
            name = f"{key}/{path.relative_to(local).as_posix()}"
            self._retry(
                f"Uploading {path} to {name}",
                lambda path=path, name=name: self.client.upload_file(str(path), self.bucket, self._key(name)),
            )
        self._retry(
            f"Marking {key} complete",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(f"{key}/{COMPLETE}"), Body=b""),
        )

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        base = self._key(prefix.rstrip("/") + "/")

        def page():
            keys.clear()
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                keys.extend(item["Key"][len(base) :] for item in page.get("Contents", []))
            return keys

        return list(self._retry(f"Listing {prefix}", page))

    def get_dir(self, key: str, local: str | Path) -> Path:
        local = Path(local)
        names = [n for n in self._list(key) if n != COMPLETE]
        if not names:
            raise ArtifactStoreError(f"Nothing stored under {key} in {self.describe()}")
        partial = local.with_name(f"{local.name}.partial-{os.getpid()}-{threading.get_ident()}")  # one per fetcher
        shutil.rmtree(partial, ignore_errors=True)
        try:
            for name in names:
                target = partial / name
                target.parent.mkdir(parents=True, exist_ok=True)
                self._retry(
                    f"Downloading {key}/{name}",
                    lambda name=name, target=target: self.client.download_file(
                        self.bucket, self._key(f"{key}/{name}"), str(target)
                    ),
                )
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # a download cut off leaves nothing on the disk
            raise
        shutil.rmtree(local, ignore_errors=True)
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, local)
        return local

    def complete_dirs(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/")
        return sorted(
            {
                f"{prefix}/{name.split('/')[0]}"
                for name in self._list(prefix)
                if name.count("/") == 1 and name.endswith("/" + COMPLETE)
            }
        )

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(f"{prefix.rstrip('/')}/{name}") for name in self._list(prefix)]
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self._retry(
                f"Deleting {prefix}",
                lambda chunk=chunk: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]}
                ),
            )

    def has_complete(self, key: str) -> bool:
        return self.file_exists(f"{key}/{COMPLETE}")

    def put_file(self, local: str | Path, key: str) -> None:
        """One object: S3 makes it visible only once the whole upload (multipart included) is done."""
        self._retry(
            f"Uploading {local} to {key}", lambda: self.client.upload_file(str(local), self.bucket, self._key(key))
        )

    def open_file(self, key: str) -> BinaryIO:
        """A stream of the object's bytes (read in chunks; nothing is buffered whole)."""
        from botocore.exceptions import ClientError

        try:
            return self._retry(
                f"Reading {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            )
        except ArtifactStoreError as exc:
            if isinstance(exc.__cause__, ClientError) and exc.__cause__.response.get("Error", {}).get("Code") in {
                "NoSuchKey",
                "404",
            }:
                raise ArtifactStoreError(f"Nothing stored under {key} in {self.describe()}") from exc
            raise

    def file_exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head():
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return self._retry(f"Looking for {key}", head)

    def delete_file(self, key: str) -> None:
        self._retry(f"Deleting {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))


Store = LocalStore | S3Store


def open_store(url: str, *, default_root: str | Path, env: Mapping[str, str] | None = None, **options) -> Store:
    """The store an URL names: "" (the default root), ``file:///abs/path`` or a plain path, ``s3://bucket/prefix``
    (credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION)."""
    env = os.environ if env is None else env
    if not url:
        return LocalStore(default_root)
    parsed = urlparse(url)
    if parsed.scheme in {"", "file"}:
        path = parsed.path if parsed.scheme else url
        if not Path(path).is_absolute():
            raise ArtifactStoreConfigError(f"FTSTUDIO_ARTIFACTS_URL={url!r}: a local store needs an absolute path.")
        return LocalStore(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ArtifactStoreConfigError(f"FTSTUDIO_ARTIFACTS_URL={url!r} names no bucket (s3://bucket/prefix).")
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        if endpoint and urlparse(endpoint).scheme not in {"http", "https"}:
            raise ArtifactStoreConfigError(f"AWS_ENDPOINT_URL={endpoint!r} is not an http(s) URL.")
        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"),
            **{**timeouts(env), **options},
        )
    raise ArtifactStoreConfigError(f"FTSTUDIO_ARTIFACTS_URL={url!r}: use s3://bucket/prefix or file:///path.")


def from_env(default_root: str | Path, env: Mapping[str, str] | None = None) -> Store:
    env = os.environ if env is None else env
    return open_store(env.get("FTSTUDIO_ARTIFACTS_URL", ""), default_root=default_root, env=env)


# Where a node keeps what it fetched: one definition for the web settings (ftstudio/settings.py) and the inference
# process (worker/serve.py `Resolver.from_env`), which read the same variables.
CACHE_BYTES = 20 * 2**30  # FTSTUDIO_ARTIFACT_CACHE_BYTES's default


def var_dir(env: Mapping[str, str] | None = None) -> Path:
    """FTSTUDIO_VAR_DIR: the database, broker, media and caches; default ``var/`` in the repository."""
    env = os.environ if env is None else env
    return Path(env.get("FTSTUDIO_VAR_DIR", Path(__file__).resolve().parent.parent / "var")).resolve()


def cache_location(env: Mapping[str, str] | None = None) -> tuple[Path, int]:
    """This node's bounded cache of fetched artifacts: its folder (FTSTUDIO_ARTIFACT_CACHE, default
    ``$FTSTUDIO_VAR_DIR/artifact-cache``) and its bound in bytes (FTSTUDIO_ARTIFACT_CACHE_BYTES, default 20 GiB)."""
    env = os.environ if env is None else env
    folder = Path(env.get("FTSTUDIO_ARTIFACT_CACHE", var_dir(env) / "artifact-cache")).resolve()
    return folder, int(env.get("FTSTUDIO_ARTIFACT_CACHE_BYTES", str(CACHE_BYTES)))


class LocalCache:
    """A bounded folder of downloaded artifacts (adapters, base models) on a worker: least recently used entries
    are removed once the total passes ``max_bytes``. An entry is a folder; its use time is its mtime."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root, self.max_bytes = Path(root), max_bytes

    @staticmethod
    def _size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    def fetch(self, store: Store, key: str) -> Path:
        target = self.root / key
        if ".." in Path(key).parts or Path(key).is_absolute():
            raise ArtifactStoreError(f"artifact key {key!r} is outside the cache {self.root}")
        if target.is_dir() and (target / ".cached").is_file():
            os.utime(target)
            return target
        store.get_dir(key, target)
        (target / ".cached").write_text(key)
        self.trim(keep=target)
        return target

    def entries(self) -> list[Path]:
        return [p.parent for p in self.root.rglob(".cached")] if self.root.is_dir() else []

    def trim(self, keep: Path | None = None) -> None:
        entries = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
        total = sum(self._size(p) for p in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if keep is not None and entry.resolve() == keep.resolve():
                continue
            total -= self._size(entry)
            shutil.rmtree(entry, ignore_errors=True)
