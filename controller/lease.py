"""The tick lease: only one tick acts on a run at a time (cron and a person at once).

`RUN/control/lease.json` holds a unique token and an expiry. A tick that finds another's
unexpired lease does not act. Otherwise it writes its own, waits the settle time, and reads
it back: it acts only if the lease is still its own. The store has no compare-and-swap, so
this holds on the assumption that no contender takes longer than the settle time (2 s; 0.2 s
on a file:// store) between reading the lease and writing its own; the ledger's version
check (`write_ledger`) and the single winner rule for instances (`winner_order`) are the
guards behind it. The holder checks the lease again before every change it makes
(`Lease.check`), and releases it when done; a holder that died leaves a lease that expires
after `TTL`.

A pod's key can write this document too. So a lease is only taken for another tick's when it
could be one: signed by this controller where `store.ledger_secret_env` is set
(`controller/seal.py`), and expiring no later than a lease written now would. A forged
lease that "expires" in the year 2999 holds nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from respawn.controller.seal import SealError
from respawn.store.backend import CorruptError
from respawn.store.keys import Keys
from respawn.store.store import CheckpointStore, StoreError
from respawn.store.strict import Name

TTL = timedelta(minutes=5)
#: A real lease expires at most TTL after it was written; this much clock skew is allowed.
SKEW = timedelta(minutes=1)
SETTLE_SECONDS = 2.0  # a remote store: a write can take a round trip or two
LOCAL_SETTLE_SECONDS = 0.2  # file://: a write is a local rename

Clock = Callable[[], datetime]
log = logging.getLogger("respawn.controller")


class LeaseLostError(StoreError):
    """Another tick took the run's lease: stop before changing anything more."""


class LeaseDoc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    token: Name
    holder: Name
    expires_at: AwareDatetime


def held_by(lease: LeaseDoc) -> str:
    """Why a tick that finds `lease` waits. A tick killed while holding it (a cancelled job,
    an OOM) leaves it in place until it expires: the run waits until then, and says so."""
    until = lease.expires_at.astimezone(UTC)
    return (
        f"another tick holds the tick lease until {until:%Y-%m-%d %H:%M:%S}Z "
        f"({lease.holder}); if that tick was killed, the run waits until then"
    )


def lease_key(run: str) -> str:
    return Keys(run).lease


def _holder() -> str:
    where = os.environ.get("GITHUB_RUN_ID")
    return f"{socket.gethostname()} pid {os.getpid()}" + (f" run {where}" if where else "")


class Lease:
    def __init__(self, store: CheckpointStore, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self.key = lease_key(store.run)
        self.token = uuid.uuid4().hex
        self.held = False
        # Why a lease document found in the store was taken for nothing (for the report).
        self.ignored: list[str] = []

    def _ignore(self, why: str) -> None:
        log.warning("%s: %s", self.key, why)
        if why not in self.ignored:
            self.ignored.append(why)

    def _read(self) -> LeaseDoc | None:
        try:
            doc = self.store.read_json(self.key)
        except SealError as e:
            self._ignore(f"ignoring a tick lease this controller did not write: {e}")
            return None
        except CorruptError as e:  # torn, foreign or hostile: it holds nothing, and is replaced
            self._ignore(f"ignoring a tick lease that cannot be read: {e}")
            return None
        if doc is None:
            return None
        try:
            lease = LeaseDoc.model_validate(doc)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            self._ignore(f"ignoring a malformed tick lease: {self.key}: {where}: {first['msg']}")
            return None
        if lease.expires_at > self.clock() + TTL + SKEW:
            self._ignore(f"ignoring a tick lease ({self.key}) that expires too late to be real")
            return None
        return lease

    def _write(self) -> None:
        doc = LeaseDoc(token=self.token, holder=_holder(), expires_at=self.clock() + TTL)
        self.store.write_json(self.key, doc.model_dump(mode="json"))

    def peek(self) -> str | None:
        """Who else holds the lease now, in words (None: nobody). Takes nothing: for `status`,
        which never acts, to say why the run is not being acted on."""
        other = self._read()
        if other is None or other.token == self.token or other.expires_at <= self.clock():
            return None
        return held_by(other)

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> str | None:
        """Take the lease. Returns None when taken, else who holds it (this tick must not
        act). Raises StoreError when the store cannot be used."""
        other = self.peek()
        if other is not None:
            return other
        self._write()
        local = getattr(self.store.backend, "url", "").startswith("file://")
        sleep(LOCAL_SETTLE_SECONDS if local else SETTLE_SECONDS)
        back = self._read()
        if back is None or back.token != self.token:
            if back is None:
                return "another tick took the tick lease at the same time (it vanished)"
            return held_by(back)
        self.held = True
        return None

    def check(self) -> None:
        """Before each change: still ours? Then extend it. Raises LeaseLostError if not."""
        back = self._read()
        if back is None or back.token != self.token:
            self.held = False
            who = back.holder if back is not None else "nobody"
            raise LeaseLostError(f"the tick lease was lost (now held by {who}); stopping")
        self._write()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        back = self._read()
        if back is not None and back.token == self.token:
            self.store.backend.delete([self.key])
