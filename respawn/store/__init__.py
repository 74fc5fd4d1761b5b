"""The checkpoint store: the pointer protocol (`store.CheckpointStore`, built from `core.py`,
`publish.py`, `pointer.py`, `restore.py` and `retention.py`; every key in `keys.py`) over a
small backend interface (`backend.py`) with two backends, file:// and b2://."""

from __future__ import annotations

from respawn.store.backend import Backend, StoreConfigError


def open_backend(
    url: str,
    credential_envs: tuple[str, str] | None = None,
    create: bool = True,
    require_delete: bool = True,
) -> Backend:
    """The backend for a store URL, importing its SDK only when that scheme is used.

    `credential_envs` names the environment variables holding the key id and key (B2);
    `create=False` refuses a file store directory that does not exist (read-only commands
    must not leave one behind for a typo); `require_delete=False`: a pod's key, which may
    lack delete (docs/keys.md)."""
    if url.startswith("file://"):
        from respawn.store.file_backend import FileBackend

        return FileBackend.from_url(url, create=create)
    if url.startswith("b2://"):
        from respawn.store.b2_backend import B2Backend

        if credential_envs is None:
            return B2Backend.from_url(url, require_delete=require_delete)
        return B2Backend.from_url(url, *credential_envs, require_delete=require_delete)
    raise StoreConfigError(
        f"unsupported store URL {url!r}: expected file:///ABS/PATH or b2://BUCKET/PREFIX"
    )
