"""`file:///ABS/PATH`: the embedded default store, a directory on this machine.

Every write goes to a temporary name in the same directory, is fsynced, then renamed into
place, so a crash leaves either the old object or the new one. Unchanged files are copied
from the previous step only after their stored bytes hash to the manifest's sha1 (a reflink
where the filesystem has one, so it costs no disk; else a real copy): a hard link would share
one rotten block with every later step.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from respawn.store.backend import (
    MissingObjectError,
    ObjectInfo,
    Progress,
    StoreConfigError,
    StoreError,
    StoreMissingError,
    TooLargeError,
)
from respawn.store.hashing import sha1_file

_TMP_PREFIX = ".respawn-tmp-"
_CHUNK = 8 << 20
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents, copy-on-write


class FileBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = "file://" + str(root)

    @classmethod
    def from_url(cls, url: str, create: bool = True) -> FileBackend:
        parsed = urlparse(url)
        path = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StoreConfigError(
                f"bad file store URL {url!r}: write an absolute path, e.g. file:///data/ckpt"
            )
        root = Path(path)
        if not create:
            if not root.is_dir():
                raise StoreMissingError(f"no store at {url}: {root} is not a directory")
            return cls(root)
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

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                if max_bytes is None:
                    return f.read()
                size = os.fstat(f.fileno()).st_size
                # A byte over the limit is enough to know, should the file grow meanwhile.
                data = f.read(max_bytes + 1) if size <= max_bytes else b""
                if size > max_bytes or len(data) > max_bytes:
                    raise TooLargeError(key, max(size, len(data)), max_bytes)
                return data
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {key}: {e.strerror}") from e

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp: Path | None = None
        try:
            tmp = self._tmp_for(path)  # its directory is made here: that can fail too
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._commit(tmp, path)
        except OSError as e:
            _discard(tmp)
            raise StoreError(f"cannot write {key}: {e.strerror or e}") from e

    def _copy_hashing(self, src: Path, dst: Path, progress: Progress | None) -> str:
        """Copy src to a temporary file beside dst, fsync, rename; return the sha1 of the bytes."""
        tmp = self._tmp_for(dst)
        digest = hashlib.sha1()
        # One buffer for the whole file: a fresh 8 MiB bytes per read is a new mapping,
        # faulted in page by page, which costs as much as the hashing.
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        try:
            with open(src, "rb", buffering=0) as fin, open(tmp, "wb", buffering=0) as fout:
                done = 0
                while n := fin.readinto(buf):
                    chunk = view[:n]
                    digest.update(chunk)
                    while chunk:
                        chunk = chunk[fout.write(chunk) :]
                    # Start writing this chunk to disk now, while the next is hashed: the
                    # fsync below then waits for the tail only, not the whole file.
                    _start_writeback(fout.fileno(), done, n)
                    done += n
                    if progress:
                        progress(n)
                fout.flush()
                os.fsync(fout.fileno())
            self._commit(tmp, dst)
        except BaseException:
            _discard(tmp)
            raise
        return digest.hexdigest()

    def upload(
        self,
        key: str,
        src: Path,
        size: int,
        progress: Progress | None = None,
        sha1: str | None = None,
    ) -> str:
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
            raise MissingObjectError(f"missing object {key}") from e
        except OSError as e:
            raise StoreError(f"cannot download {key}: {e.strerror}") from e

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        src, dst = self._path(src_key), self._path(dst_key)
        tmp = self._tmp_for(dst)
        try:
            try:
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    if not _reflink(fin.fileno(), fout.fileno()):
                        shutil.copyfileobj(fin, fout, _CHUNK)
                    fout.flush()
                    os.fsync(fout.fileno())
            except FileNotFoundError:
                tmp.unlink(missing_ok=True)
                return False
            # Prove the copy (and so the source) before it becomes an object of a new step.
            if tmp.stat().st_size != size or sha1_file(tmp) != sha1:
                tmp.unlink(missing_ok=True)
                return False
            self._commit(tmp, dst)
            return True
        except OSError as e:
            _discard(tmp)
            raise StoreError(f"cannot copy {src_key} to {dst_key}: {e.strerror}") from e

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the deepest directory the prefix names; filter the rest by string prefix.
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(base_key) if base_key else self.root
        out: builtins.list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base, onerror=_unlistable(prefix)):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.lstat(os.path.join(dirpath, name))
                        out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        out.sort(key=lambda o: o.key)
        return out

    def list_leftovers(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Temporaries a crashed writer left (never visible to list()), with their age."""
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(base_key) if base_key else self.root
        out: builtins.list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base, onerror=_unlistable(prefix)):
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if name.startswith(_TMP_PREFIX) and key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.lstat(os.path.join(dirpath, name))
                        out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return out

    def delete(self, keys: builtins.list[str]) -> None:
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


def _unlistable(prefix: str) -> Callable[[OSError], None]:
    """os.walk's error handler: a directory that cannot be read fails the listing (an
    unreadable directory listed as empty would read as a run with no checkpoints). One that
    vanished while walking (retention removed it) is simply not there."""

    def fail(e: OSError) -> None:
        if isinstance(e, FileNotFoundError):
            return
        raise StoreError(f"cannot list {prefix}: {e.filename}: {e.strerror}") from e

    return fail


def _start_writeback(fd: int, offset: int, length: int) -> None:
    # Linux starts (without waiting for) writeback of dirty pages asked to be dropped.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EBADF):
            return False
        raise
    return True


def _discard(tmp: Path | None) -> None:
    """Remove a failed write's temporary file. In a directory that cannot be read or written
    even that fails (PermissionError is no FileNotFoundError): the write's own StoreError
    must still be what the caller sees, and a leftover is collected later by age."""
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
