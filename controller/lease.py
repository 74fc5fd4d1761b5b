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
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, ValidationError

from respawn.controller.seal import SealError
from respawn.store.keys import Keys
from respawn.store.store import CheckpointStore, StoreError

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

    token: str
    holder: str
    expires_at: datetime


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

    def _read(self) -> LeaseDoc | None:
        try:
            doc = self.store.read_json(self.key)
        except SealError as e:
            log.warning("%s: ignoring a tick lease this controller did not write: %s", self.key, e)
            return None
        if doc is None:
            return None
        try:
            lease = LeaseDoc.model_validate(doc)
        except ValidationError:
            return None  # a torn or foreign document holds nothing
        if lease.expires_at > self.clock() + TTL + SKEW:
            log.warning("%s: ignoring a tick lease that expires too late to be real", self.key)
            return None
        return lease

    def _write(self) -> None:
        doc = LeaseDoc(token=self.token, holder=_holder(), expires_at=self.clock() + TTL)
        self.store.write_json(self.key, doc.model_dump(mode="json"))

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> str | None:
        """Take the lease. Returns None when taken, else who holds it (this tick must not
        act). Raises StoreError when the store cannot be used."""
        other = self._read()
        if other is not None and other.token != self.token and other.expires_at > self.clock():
            return f"{other.holder} (until {other.expires_at:%H:%M:%S}Z)"
        self._write()
        local = getattr(self.store.backend, "url", "").startswith("file://")
        sleep(LOCAL_SETTLE_SECONDS if local else SETTLE_SECONDS)
        back = self._read()
        if back is None or back.token != self.token:
            return back.holder if back is not None else "another tick (the lease vanished)"
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
