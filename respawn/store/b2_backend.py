"""`b2://BUCKET/PREFIX`: Backblaze B2 through b2sdk.

- Credentials come from the environment (names configurable). The key is authorized once at
  start and checked for every capability a sync needs, so a read-only key fails now with the
  fix, not at the first upload an hour into the run.
- Large files go through b2sdk's own machinery: parallel multi-part upload on
  `max_upload_workers`, parallel ranged download when saved to a path.
- b2sdk does not detect a corrupt large file on download, so this backend never claims a
  checksum: the store hashes what it downloaded and compares with the manifest.
- Deleting a key deletes every version: B2 keeps hidden versions and bills for them.
- Transient failures (connection, timeout, 5xx, 429 with Retry-After) are retried with
  backoff, a bounded number of times; fatal ones (bad key, missing bucket) are not.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from b2sdk.v2 import B2Api, InMemoryAccountInfo
from b2sdk.v2 import exception as b2exc
from b2sdk.v2.exception import B2Error
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from respawn.store.backend import (
    MissingObjectError,
    ObjectInfo,
    Progress,
    StoreConfigError,
    StoreError,
    TooLargeError,
)
from respawn.store.hashing import sha1_file
from respawn.store.many import each

NEEDED_CAPABILITIES = ("listBuckets", "listFiles", "readFiles", "writeFiles", "deleteFiles")
#: What a pod's key needs (docs/keys.md): retention is the controller's job, so no delete, and
#: a key restricted to the bucket (and to the run's prefix) needs no listBuckets either.
POD_CAPABILITIES = ("listFiles", "readFiles", "writeFiles")
_URL = re.compile(r"^b2://(?P<bucket>[A-Za-z0-9-]{6,63})(?:/(?P<prefix>.*))?$")
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    b2exc.B2ConnectionError,
    b2exc.B2RequestTimeout,
    b2exc.RequestTimeout,
    b2exc.ServiceError,
    b2exc.TooManyRequests,
    b2exc.TruncatedOutput,
    b2exc.ConnectionReset,
    b2exc.BrokenPipe,
    b2exc.MaxRetriesExceeded,
    TimeoutError,
    ConnectionError,
)
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # first retry after this, doubling, at most 30 s


def _is_transient(e: BaseException) -> bool:
    return isinstance(e, TRANSIENT)


def _wait(state: RetryCallState) -> float:
    """Exponential backoff, but never shorter than the server's Retry-After."""
    backoff = wait_exponential(multiplier=BACKOFF_SECONDS, max=30)(state)
    exc = state.outcome.exception() if state.outcome else None
    after = getattr(exc, "retry_after_seconds", None)
    return max(backoff, float(after)) if after else backoff


_retry = retry(
    retry=retry_if_exception(_is_transient),
    stop=stop_after_attempt(ATTEMPTS),
    wait=_wait,
    reraise=True,
)


class _Listener:
    """b2sdk progress (cumulative bytes) → our Progress (bytes just moved)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.seen = 0

    def set_total_bytes(self, total_byte_count: int) -> None:
        pass

    def bytes_completed(self, byte_count: int) -> None:
        if self.progress and byte_count > self.seen:
            self.progress(byte_count - self.seen)
        self.seen = max(self.seen, byte_count)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def make_api(workers: int = 8) -> B2Api:
    return B2Api(
        InMemoryAccountInfo(),
        max_upload_workers=workers,
        max_copy_workers=workers,
        max_download_workers=workers,
        max_download_streams_per_file=workers,
    )


class B2Backend:
    def __init__(
        self, api: B2Api, bucket_name: str, prefix: str = "", require_delete: bool = True
    ) -> None:
        self.api = api
        self.prefix = prefix.strip("/")
        self.url = f"b2://{bucket_name}" + (f"/{self.prefix}" if self.prefix else "")
        allowed: dict[str, Any] = self.api.account_info.get_allowed() or {}
        self.can_delete = "deleteFiles" in set(allowed.get("capabilities") or ())
        self._check_capabilities(bucket_name, require_delete)
        if allowed.get("bucketId") and allowed.get("bucketName") == bucket_name:
            # A key restricted to this bucket names it already: no listBuckets needed (and a
            # key without it is refused by b2_list_buckets).
            self.bucket = api.BUCKET_CLASS(api, allowed["bucketId"], name=bucket_name)
            return
        try:
            self.bucket = _retry(api.get_bucket_by_name)(bucket_name)
        except b2exc.NonExistentBucket as e:
            raise StoreConfigError(
                f"B2 bucket {bucket_name!r} does not exist or this key cannot see it: "
                "create it, or fix the bucket name in store.url"
            ) from e
        except B2Error as e:
            raise _translate(e, f"opening bucket {bucket_name}") from e

    @classmethod
    def from_url(
        cls,
        url: str,
        key_id_env: str = "B2_APPLICATION_KEY_ID",
        key_env: str = "B2_APPLICATION_KEY",
        api: B2Api | None = None,
        realm: str = "production",
        require_delete: bool = True,
    ) -> B2Backend:
        m = _URL.match(url)
        if not m:
            raise StoreConfigError(f"bad B2 store URL {url!r}: expected b2://BUCKET/PREFIX")
        key_id, key = os.environ.get(key_id_env), os.environ.get(key_env)
        if not key_id or not key:
            missing = [n for n, v in ((key_id_env, key_id), (key_env, key)) if not v]
            raise StoreConfigError(
                f"B2 credentials missing: set {' and '.join(missing)} "
                "(an application key with listFiles, readFiles, writeFiles, deleteFiles)"
            )
        api = api or make_api()
        authorize(api, key_id, key, realm)
        return cls(api, m.group("bucket"), m.group("prefix") or "", require_delete)

    def _check_capabilities(self, bucket_name: str, require_delete: bool = True) -> None:
        allowed: dict[str, Any] = self.api.account_info.get_allowed() or {}
        caps = set(allowed.get("capabilities") or ())
        # listBuckets is needed only to find the bucket by name; a bucket-restricted key
        # knows its bucket already.
        restricted = [b.get("name") for b in allowed.get("buckets") or []] or (
            [allowed["bucketName"]] if allowed.get("bucketName") else []
        )
        wanted = NEEDED_CAPABILITIES if require_delete else ("listBuckets", *POD_CAPABILITIES)
        needed = [c for c in wanted if not (c == "listBuckets" and restricted)]
        missing = [c for c in needed if c not in caps]
        if missing:
            raise StoreConfigError(
                f"the B2 key lacks capabilities {', '.join(missing)}: create a key with "
                f"{', '.join(wanted[1:])} for bucket {bucket_name!r} (docs/keys.md)"
            )
        if restricted and bucket_name not in restricted:
            raise StoreConfigError(
                f"the B2 key is restricted to bucket(s) {', '.join(map(str, restricted))}, "
                f"not {bucket_name!r}"
            )
        name_prefix = allowed.get("namePrefix")
        root = self.prefix + "/" if self.prefix else ""
        # A key for the whole store (a prefix of it) or for part of it (a pod key restricted
        # to its run's prefix: it is refused by B2 outside it, which is the point).
        if name_prefix and not (root.startswith(name_prefix) or name_prefix.startswith(root)):
            raise StoreConfigError(
                f"the B2 key may only use names under {name_prefix!r}; store.url prefix is "
                f"{self.prefix!r}"
            )

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return _retry(fn)(*args, **kwargs)
        except B2Error as e:
            raise _translate(e, what) from e
        except (TimeoutError, ConnectionError) as e:
            raise StoreError(f"{what}: {e}") from e

    # -- Backend ---------------------------------------------------------------------------

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        def fetch() -> bytes | None:
            try:
                downloaded = self.bucket.download_file_by_name(self._name(key))
            except b2exc.FileNotPresent:
                return None
            # The size is in the response's headers: the body is read only after this.
            size = downloaded.download_version.content_length
            if max_bytes is not None and size > max_bytes:
                with contextlib.suppress(Exception):
                    downloaded.response.close()
                raise TooLargeError(key, size, max_bytes)
            buf = io.BytesIO()
            downloaded.save(buf)
            return buf.getvalue()

        return self._call(f"reading {key}", fetch)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(f"writing {key}", self.bucket.upload_bytes, data, self._name(key))

    def upload(
        self,
        key: str,
        src: Path,
        size: int,
        progress: Progress | None = None,
        sha1: str | None = None,
    ) -> str | None:
        # Hand b2sdk the sha1: B2 verifies it for a small file and records it in the file
        # info of a large one, where a later server-side copy checks it.
        sha1 = sha1 or sha1_file(src)
        version = self._call(
            f"uploading {key}",
            self.bucket.upload_local_file,
            str(src),
            self._name(key),
            sha1_sum=sha1,
            progress_listener=_Listener(progress),
        )
        return recorded_sha1(version) or sha1

    def download(self, key: str, dst: Path, progress: Progress | None = None) -> str | None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".respawn-tmp-{dst.name}.{uuid.uuid4().hex[:8]}"

        def fetch() -> None:
            try:
                downloaded = self.bucket.download_file_by_name(
                    self._name(key), progress_listener=_Listener(progress)
                )
            except b2exc.FileNotPresent as e:
                raise MissingObjectError(f"missing object {key}") from e
            downloaded.save_to(str(tmp))  # a path: b2sdk downloads ranges in parallel

        try:
            self._call(f"downloading {key}", fetch)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return None  # b2sdk cannot be trusted on large files: the store hashes

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        def server_copy() -> bool:
            try:
                src = self.bucket.get_file_info_by_name(self._name(src_key))
            except b2exc.FileNotPresent:
                return False
            # The object under this name may have been replaced since the manifest was
            # written: copy only when B2's own record of its bytes is the manifest's sha1.
            if src.size != size or recorded_sha1(src) != sha1:
                return False
            info = dict(src.file_info or {})
            info.setdefault(LARGE_FILE_SHA1, sha1)  # a part-wise copy has no content sha1
            # Above one part, copy part by part (b2_copy_part, in parallel): a single
            # b2_copy_file is capped in size and is one long request.
            part = self.api.account_info.get_recommended_part_size()
            self.bucket.copy(
                src.id_,
                self._name(dst_key),
                length=src.size,
                max_part_size=part,
                content_type=src.content_type,
                file_info=info,
            )
            return True

        return self._call(f"copying {src_key} to {dst_key}", server_copy)

    def list(self, prefix: str) -> list[ObjectInfo]:
        folder = self._name(prefix.rsplit("/", 1)[0] + "/") if "/" in prefix else self.prefix
        folder = folder.rstrip("/") + "/" if folder else ""
        wanted = self._name(prefix)

        def ls() -> list[ObjectInfo]:
            out = []
            for version, _ in self.bucket.ls(folder, recursive=True, latest_only=True):
                if version.file_name.startswith(wanted):
                    at = version.upload_timestamp / 1000 if version.upload_timestamp else None
                    key, sha1 = self._key(version.file_name), recorded_sha1(version)
                    out.append(ObjectInfo(key, version.size, at, sha1))
            return out

        return sorted(self._call(f"listing {prefix}", ls), key=lambda o: o.key)

    def delete(self, keys: builtins.list[str]) -> None:
        def purge(key: str) -> None:
            name = self._name(key)

            def versions() -> None:
                for version in list(self.bucket.list_file_versions(name)):
                    with contextlib.suppress(b2exc.FileNotPresent):
                        self.bucket.delete_file_version(version.id_, name)

            # Each key's own retry: a transient failure repeats only that key's calls.
            self._call(f"deleting {key}", versions)

        # Every key (and on B2 every version) is its own round trip: many at once.
        each(purge, keys)


LARGE_FILE_SHA1 = "large_file_sha1"


def recorded_sha1(version: Any) -> str | None:
    """The sha1 B2 recorded for a stored object: its content sha1, or for a large file the
    whole-file sha1 the uploader put in its file info. None when neither is known."""
    content = str(getattr(version, "content_sha1", None) or "")
    content = content.removeprefix("unverified:")
    if re.fullmatch(r"[0-9a-f]{40}", content):
        return content
    large = str((getattr(version, "file_info", None) or {}).get(LARGE_FILE_SHA1) or "")
    return large if re.fullmatch(r"[0-9a-f]{40}", large) else None


def authorize(api: B2Api, key_id: str, key: str, realm: str = "production") -> None:
    try:
        _retry(api.authorize_account)(realm, key_id, key)
    except (b2exc.InvalidAuthToken, b2exc.Unauthorized) as e:
        raise StoreConfigError(
            "B2 rejected the application key: check the key id and key in the environment "
            "(they are shown once, when the key is created)"
        ) from e
    except B2Error as e:
        raise _translate(e, "authorizing with B2") from e


def _translate(e: B2Error, what: str) -> StoreError:
    if isinstance(e, b2exc.Unauthorized | b2exc.InvalidAuthToken | b2exc.AccessDenied):
        return StoreConfigError(f"{what}: B2 denied access ({e}); check the key's capabilities")
    if isinstance(
        e, b2exc.CapabilityNotAllowed | b2exc.BucketNotAllowed | b2exc.FileNameNotAllowed
    ):
        return StoreConfigError(f"{what}: the key is not allowed to do this ({e})")
    return StoreError(f"{what}: {e}")
