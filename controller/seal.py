"""The controller's own documents in the store, authenticated (HMAC-SHA256).

Pods hold a key that can write their run's prefix, so whatever is in the store may have been
written by a pod. The ledger is the controller's memory — halts, launch history (the
crash-loop and budget breakers), the current generation — so with `store.ledger_secret_env`
set, the controller signs it with a secret no pod has and refuses one that does not verify:
the run is `unknown` (alert, nothing destructive) until a person looks. A forged ledger can
neither clear a halt nor erase the launch history; the halt order (`control/halt.json`) is
signed the same way. With a verified ledger, generations that only pod-written documents
claim (pointer, heartbeat) are ignored: a forged `generation: 1000000000` stalls nothing.

Every signature covers the document's store key too: the secret is fleet-wide, so without it
run B's signed resume order copied over run A's terminate would verify.

The tick lease (`control/lease.json`) is signed too: a lease this controller did not write
holds nothing (a pod cannot lock the controller out with a lease that never expires).

A signature alone cannot stop a pod putting back an older document this controller signed
(a ledger from before a breaker halted the run, a `resume` from before a `terminate`), or
hiding one (B2 `hide_file` needs only writeFiles). So the ledger and the halt order carry a
signed sequence number, and the controller keeps the last one it wrote beside them
(`control/ledger.seq.json`, `control/halt.seq.json`, signed): a document older than its
counter, or missing while its counter says it was written, is refused like a forgery. What
remains (docs/keys.md): a pod that puts back a document *and* its counter together.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from respawn.store.backend import Backend, CorruptError, Progress, StoreConfigError, StoreError
from respawn.store.keys import Keys, split_run_key
from respawn.store.strict import DOC_MAX_BYTES, loads_document

MAC_FIELD = "mac"
SEQ_FIELD = "seq"
#: Set to 1 for one tick to adopt (sign as it is) a ledger written before `ledger_secret_env`
#: was configured.
ADOPT_UNSIGNED_ENV = "RESPAWN_ADOPT_UNSIGNED_LEDGER"
MIN_SECRET_BYTES = 16


class SealError(StoreError):
    """A controller document this controller did not write (as it is, or any more)."""


def _is_sealed(key: str) -> bool:
    """The controller's own documents: the ledger, the halt order, the tick lease, the last
    breaker halt. Not the fence (`control/fence.json`): pods read it and cannot verify a
    signature."""
    run, _ = split_run_key(key)
    keys = Keys(run)
    return key in (keys.ledger, keys.halt, keys.lease, keys.breaker)


def counter_key(key: str) -> str | None:
    """Where the last sequence number written to `key` is kept (None: not counted; the
    lease is rewritten several times a tick and expires on its own)."""
    run, _ = split_run_key(key)
    keys = Keys(run)
    return {
        keys.ledger: keys.ledger_seq,
        keys.halt: keys.halt_seq,
        keys.breaker: keys.breaker_seq,
    }.get(key)


def _mac(key: str, doc: dict[str, Any], secret: bytes) -> str:
    """The signature of `doc` stored at `key`. The key is signed with it: one secret signs
    every run of the fleet, and a document signed for run B (B's resume order, B's ledger)
    must be no signature for run A, nor a halt order one for a ledger."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret, key.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def _unbound_mac(doc: dict[str, Any], secret: bytes) -> str:
    """The signature respawn wrote before it signed the key: adopted only on request."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def seal(key: str, data: bytes, secret: bytes, seq: int | None = None) -> bytes:
    doc = json.loads(data)
    doc.pop(MAC_FIELD, None)
    if seq is not None:
        doc[SEQ_FIELD] = seq
    doc[MAC_FIELD] = _mac(key, doc, secret)
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def signed_as_now(key: str, data: bytes, secret: bytes) -> bool:
    """Whether `data` carries the current kind of signature (False: unsigned, or signed before
    signatures named their key: an adopting tick signs it again)."""
    doc = json.loads(data)
    mac = doc.pop(MAC_FIELD, None)
    return isinstance(mac, str) and hmac.compare_digest(mac, _mac(key, doc, secret))


def verify(
    key: str,
    data: bytes,
    secret: bytes,
    adopt_unsigned: bool = False,
    adopt_unbound: bool | None = None,
) -> bytes:
    """The document, or StoreError when this controller did not write it. A migration tick
    also accepts a document without a signature (`adopt_unsigned`), or with one from before
    signatures named their key (`adopt_unbound`, by default as `adopt_unsigned`)."""
    if adopt_unbound is None:
        adopt_unbound = adopt_unsigned
    try:
        doc = loads_document(key, data)
    except CorruptError as e:
        raise SealError(str(e)) from e
    mac = doc.pop(MAC_FIELD, None)
    if mac is None and adopt_unsigned:
        return data
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, doc, secret)):
        old = isinstance(mac, str) and hmac.compare_digest(mac, _unbound_mac(doc, secret))
        if old and adopt_unbound:
            return data
        if old:
            raise SealError(
                f"{key} carries a signature from before signatures named their document: "
                f"run one tick with {ADOPT_UNSIGNED_ENV}=1 to sign it again (docs/keys.md)"
            )
        what = "carries no controller signature" if mac is None else "has a wrong signature"
        raise SealError(
            f"{key} {what}: it was not written by this controller (edited, or forged with a "
            f"pod's key?). Nothing is done to the run until a person checks it; to adopt a "
            f"ledger from before store.ledger_secret_env was set, run once with "
            f"{ADOPT_UNSIGNED_ENV}=1"
        )
    return data


class SealedBackend:
    """A backend whose ledgers are signed on write and verified on read; everything else
    passes through unchanged."""

    def __init__(self, inner: Backend, secret: bytes, adopt_unsigned: bool = False) -> None:
        self.inner = inner
        self.url = inner.url
        self._secret = secret
        self._adopt = adopt_unsigned

    def raw(self) -> Backend:
        """The backend without verification: for `respawn ledger repair`, which keeps a
        ledger that does not verify beside the rebuilt one."""
        return self.inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _last_seq(self, key: str) -> int:
        """The sequence number this controller last wrote to `key` (0: never counted)."""
        where = counter_key(key)
        raw = self.inner.read_bytes(where, max_bytes=DOC_MAX_BYTES) if where is not None else None
        if where is None or raw is None:
            return 0
        # A counter was never unsigned: only its old kind of signature is adopted.
        doc = loads_document(where, verify(where, raw, self._secret, adopt_unbound=self._adopt))
        seq = doc.get(SEQ_FIELD)
        if not isinstance(seq, int) or doc.get("key") != key:
            raise SealError(f"{where} does not count {key}")
        return seq

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        raw = self.inner.read_bytes(key, max_bytes=max_bytes)
        if not _is_sealed(key):
            return raw
        last = self._last_seq(key)
        if raw is None:
            if last > 0:
                raise SealError(
                    f"{key} is missing, but this controller wrote it ({counter_key(key)} is "
                    f"at {last}): hidden or deleted with a pod's key? Nothing is done to the "
                    "run until a person checks (`respawn ledger repair` rebuilds a ledger)"
                )
            return None
        data = verify(key, raw, self._secret, self._adopt)
        seq = loads_document(key, data).get(SEQ_FIELD, 0)
        if not isinstance(seq, int) or seq < last:
            raise SealError(
                f"{key} is an older copy (sequence {seq}) than the one this controller last "
                f"wrote (sequence {last}): put back with a pod's key? Nothing is done to the "
                "run until a person checks"
            )
        if self._adopt and not signed_as_now(key, raw, self._secret):
            # Adopted: signed as it is, so later ticks (without the variable) accept it.
            self.write_bytes(key, raw)
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        if not _is_sealed(key):
            self.inner.write_bytes(key, data)
            return
        where = counter_key(key)
        if where is None:
            self.inner.write_bytes(key, seal(key, data, self._secret))
            return
        # The document first, then its counter: a crash between leaves a document newer than
        # its counter, which reads fine.
        try:
            seq = self._last_seq(key) + 1
        except SealError:
            seq = 1  # a forged counter: this controller's write starts it afresh
        self.inner.write_bytes(key, seal(key, data, self._secret, seq))
        counter = json.dumps({"key": key, SEQ_FIELD: seq}).encode()
        self.inner.write_bytes(where, seal(where, counter, self._secret))

    def upload(
        self,
        key: str,
        src: Path,
        size: int,
        progress: Progress | None = None,
        sha1: str | None = None,
    ) -> Any:
        return self.inner.upload(key, src, size, progress, sha1=sha1)

    def download(self, key: str, dst: Path, progress: Progress | None = None) -> Any:
        return self.inner.download(key, dst, progress)

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        return self.inner.copy(src_key, dst_key, sha1, size)

    def list(self, prefix: str) -> Any:
        return self.inner.list(prefix)

    def delete(self, keys: builtins.list[str]) -> None:
        self.inner.delete(keys)


def sealed(backend: Backend, secret_env: str | None, environ: dict[str, str] | None = None) -> Any:
    """The backend the controller uses: sealed when the config names a ledger secret."""
    if secret_env is None:
        return backend
    env = os.environ if environ is None else environ
    secret = env.get(secret_env, "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise StoreConfigError(
            f"store.ledger_secret_env names {secret_env}, which is "
            + ("not set" if not secret else f"shorter than {MIN_SECRET_BYTES} bytes")
            + " on the controller (a random secret only the controller holds; docs/keys.md)"
        )
    return SealedBackend(backend, secret.encode(), env.get(ADOPT_UNSIGNED_ENV) == "1")
