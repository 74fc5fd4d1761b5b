"""`file:///ABS/PATH`: the embedded default store, a directory on this machine.

Every write goes to a temporary name in the same directory, is fsynced, then renamed into
place, so a crash leaves either the old object or the new one. Unchanged files are hard-linked
(the file store's "server-side copy"), so a step that shares most bytes with the previous one
costs almost no disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from respawn.store.backend import ObjectInfo, Progress, StoreConfigError, StoreError

_TMP_PREFIX = ".respawn-tmp-"
_CHUNK = 8 << 20


class FileBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = "file://" + str(root)

    @classmethod
    def from_url(cls, url: str) -> FileBackend:
        parsed = urlparse(url)
        path = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StoreConfigError(
                f"bad file store URL {url!r}: write an absolute path, e.g. file:///data/ckpt"
            )
        root = Path(path)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreConfigError(f"cannot create store directory {root}: {e.strerror}") from e
        return cls(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    def _tmp_for(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.parent / f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}"

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _commit(self, tmp: Path, path: Path) -> None:
        os.replace(tmp, path)
        self._fsync_dir(path.parent)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e.strerror}") from e

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._tmp_for(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._commit(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {key}: {e.strerror}") from e

    def _copy_hashing(self, src: Path, dst: Path, progress: Progress | None) -> str:
        """Copy src to a temporary file beside dst, fsync, rename; return the sha1 of the bytes."""
        tmp = self._tmp_for(dst)
        digest = hashlib.sha1()
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
                    if progress:
                        progress(len(chunk))
                fout.flush()
                os.fsync(fout.fileno())
            self._commit(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def upload(self, key: str, src: Path, size: int, progress: Progress | None = None) -> str:
        try:
            return self._copy_hashing(src, self._path(key), progress)
        except OSError as e:
            raise StoreError(f"cannot upload {src} to {key}: {e.strerror}") from e

    def download(self, key: str, dst: Path, progress: Progress | None = None) -> str:
        src = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._copy_hashing(src, dst, progress)
        except FileNotFoundError as e:
            raise StoreError(f"missing object {key}") from e
        except OSError as e:
            raise StoreError(f"cannot download {key}: {e.strerror}") from e

    def copy(self, src_key: str, dst_key: str) -> None:
        src, dst = self._path(src_key), self._path(dst_key)
        tmp = self._tmp_for(dst)
        try:
            try:
                os.link(src, tmp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(src, tmp)
            self._commit(tmp, dst)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot copy {src_key} to {dst_key}: {e.strerror}") from e

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the deepest directory the prefix names; filter the rest by string prefix.
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(base_key) if base_key else self.root
        out: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        out.append(ObjectInfo(key, os.stat(os.path.join(dirpath, name)).st_size))
        out.sort(key=lambda o: o.key)
        return out

    def delete(self, keys: list[str]) -> None:
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StoreError(f"cannot delete {key}: {e.strerror}") from e
            parents.add(path.parent)
        # Remove directories the deletion emptied, up to (not including) the store root.
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            d = parent
            while d != self.root and self.root in d.parents:
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent
