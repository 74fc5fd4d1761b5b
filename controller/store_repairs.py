"""What the store healed on its own, read cheaply once per tick (issue 8.5).

A restoring pod that falls back from a corrupt step quarantines it (`RUN/quarantine/`) and
records each repair (`RUN/repairs/`). Both folders are written with the pod key, so what is in
them is untrusted text and may be plentiful: the quarantined steps come from the listing's
names alone, and only repair records newer than the ledger's mark are read, the newest few,
each only if small.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from respawn.controller.model import StoreRepairs
from respawn.store.schema import RepairEvent, utcnow
from respawn.store.store import CheckpointStore, StoreError

#: Records read per tick at most; the rest are counted, not read (a flood costs one listing).
MAX_READ = 5
#: A record larger than this is not read (the store writes a few hundred bytes).
MAX_RECORD_BYTES = 16 * 1024
#: How the store names a record (`CheckpointStore._record_repair`): its time, then a token.
_RECORD = re.compile(r"^(?P<at>\d{8}T\d{12})-[0-9a-f]{8}\.json$")
#: A record "from the future" by more than this is not one the store wrote.
SKEW = timedelta(hours=1)


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def quarantined_steps(store: CheckpointStore) -> tuple[int, ...]:
    steps = set()
    for obj in store.backend.list(store.keys.quarantine):
        # `quarantine_for` names a record after its manifest's key, "/" written as "--".
        key = store.keys.checkpoints + _name(obj.key).replace("--", "/")
        parsed = store.keys.parse_manifest_key(key)
        if parsed is not None:
            steps.add(parsed[0])
    return tuple(sorted(steps))


def _plausible(name: str, latest: datetime) -> bool:
    """Named as the store names records, and not after `latest`: the mark is the newest name
    noted, so one record named `99991231T...` or `~` would hide every later one."""
    m = _RECORD.match(name)
    if m is None:
        return False
    try:
        at = datetime.strptime(m.group("at"), "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return False
    return at <= latest


def read_store_repairs(
    store: CheckpointStore, seen: str | None, now: datetime | None = None
) -> StoreRepairs:
    """Raises StoreError when a listing fails (a record that cannot be read is skipped)."""
    latest = (now or utcnow()) + SKEW
    listed = sorted(
        (o for o in store.backend.list(store.keys.repairs) if _plausible(_name(o.key), latest)),
        key=lambda o: _name(o.key),
    )
    fresh = [o for o in listed if seen is None or _name(o.key) > seen]
    events: list[RepairEvent] = []
    for obj in fresh[-MAX_READ:]:
        if obj.size > MAX_RECORD_BYTES:
            continue
        try:
            doc = store.read_json(obj.key)
            if doc is not None:
                events.append(RepairEvent.model_validate(doc))
        except (StoreError, ValueError):
            continue  # a torn or hostile record: counted as unread, never a reason to stop
    return StoreRepairs(
        quarantined_steps=quarantined_steps(store),
        new=tuple(events),
        unread=len(fresh) - len(events),
        newest=_name(fresh[-1].key) if fresh else seen,
    )
