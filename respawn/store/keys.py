"""Every key of one run in the store, in one place (`docs/contracts.md`, "Store keys").

The pod's documents, the controller's (ledger, halt order, lease, fence and their counters),
the checkpoints and the folders beside them: anything that reads or writes a run's key names
it through `Keys`, so a layout change is made here once.

Two prefixes (docs/keys.md): `RUN/` holds what pods write and read (checkpoints, pointer,
heartbeat, the fence); `_control/RUN/` holds the documents only the controller writes
(ledger, halt order, lease, tick record, breaker record, their counters), so a pod key
restricted to `PREFIX/RUN/` can neither write nor read them. Stores written before the
split have those documents under `RUN/` (`Keys.legacy`): read there once, then moved.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from respawn.store.schema import Manifest

STEP_DIGITS = 6
# Bounded: a step directory named with a thousand digits is not a step (respawn.store.strict).
_STEP_DIR = re.compile(r"^step_(\d{1,16})$")
UPLOAD_DIR_PATTERN = r"^(g[0-9]{6,}-[0-9a-f]{8,32}/)?$"
_MANIFEST_NAME = re.compile(r"^MANIFEST(?:-g(?P<gen>[0-9]{6,})-(?P<token>[0-9a-f]{8,32}))?\.json$")
QUARANTINE_DIR = "quarantine"
REPAIRS_DIR = "repairs"
CONTROL_DIR = "control"
#: Above every run: the controller's own documents, out of every per-run pod key's reach.
CONTROL_ROOT = "_control"
#: The controller's documents, by their name under `_control/RUN/`.
LEDGER_NAME = "ledger.json"
HALT_NAME = "halt.json"
LEASE_NAME = "lease.json"
TICK_NAME = "tick.json"
LEDGER_SEQ_NAME = "ledger.seq.json"
HALT_SEQ_NAME = "halt.seq.json"
BREAKER_NAME = "breaker.json"
BREAKER_SEQ_NAME = "breaker.seq.json"
CONTROLLER_NAMES = (
    LEDGER_NAME,
    HALT_NAME,
    LEASE_NAME,
    TICK_NAME,
    LEDGER_SEQ_NAME,
    HALT_SEQ_NAME,
    BREAKER_NAME,
    BREAKER_SEQ_NAME,
)
#: Where a store from before the split keeps each (under `RUN/`).
_LEGACY_NAMES = {
    LEDGER_NAME: LEDGER_NAME,
    TICK_NAME: TICK_NAME,
    **{n: f"{CONTROL_DIR}/{n}" for n in CONTROLLER_NAMES if n not in (LEDGER_NAME, TICK_NAME)},
}
#: The fence stays under `RUN/`: pods read it.
FENCE_NAME = f"{CONTROL_DIR}/fence.json"
LOGS_DIR = "logs"


def step_dirname(step: int) -> str:
    return f"step_{step:0{STEP_DIGITS}d}"


def parse_step_dirname(name: str) -> int | None:
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def split_run_key(key: str) -> tuple[str, str]:
    """(run, the key's name under the run): `_control/a/halt.json` → ('a', 'halt.json'),
    `a/control/halt.json` (a store from before the split) → ('a', 'control/halt.json')."""
    if key.startswith(CONTROL_ROOT + "/"):
        run, _, name = key[len(CONTROL_ROOT) + 1 :].rpartition("/")
        return run, name
    for name in (*_LEGACY_NAMES.values(), FENCE_NAME):
        if key.endswith("/" + name):
            return key[: -len(name) - 1], name
    run, _, name = key.rpartition("/")
    return run, name


class Keys:
    """Every key of one run in the store, in one place."""

    def __init__(self, run: str) -> None:
        self.run = run

    @property
    def latest(self) -> str:
        return f"{self.run}/latest.json"

    @property
    def heartbeat(self) -> str:
        return f"{self.run}/heartbeat.json"

    def _control(self, name: str) -> str:
        return f"{CONTROL_ROOT}/{self.run}/{name}"

    def legacy(self, key: str) -> str | None:
        """Where a store from before the split kept the controller document `key` (None: not
        a controller document of this run)."""
        prefix = f"{CONTROL_ROOT}/{self.run}/"
        name = key[len(prefix) :] if key.startswith(prefix) else None
        old = _LEGACY_NAMES.get(name) if name is not None else None
        return f"{self.run}/{old}" if old is not None else None

    @property
    def tick(self) -> str:
        """When the controller last ticked for this run."""
        return self._control(TICK_NAME)

    @property
    def ledger(self) -> str:
        return self._control(LEDGER_NAME)

    @property
    def halt(self) -> str:
        """A person's halt order (`respawn terminate` / `resume`)."""
        return self._control(HALT_NAME)

    @property
    def lease(self) -> str:
        """The tick lease: one acting tick per run at a time."""
        return self._control(LEASE_NAME)

    @property
    def fence(self) -> str:
        """The generation that owns the run (`respawn.contract.fencing.Fence`): written by
        the controller whenever it claims one, read by pods. Plain JSON: pods cannot verify
        the controller's signature. Under `RUN/`, where pods can read it."""
        return f"{self.run}/{FENCE_NAME}"

    @property
    def ledger_seq(self) -> str:
        return self._control(LEDGER_SEQ_NAME)

    @property
    def halt_seq(self) -> str:
        return self._control(HALT_SEQ_NAME)

    @property
    def breaker(self) -> str:
        """The last halt a breaker ordered: kept apart from the ledger, so `ledger repair`
        after a replayed ledger still finds it."""
        return self._control(BREAKER_NAME)

    @property
    def breaker_seq(self) -> str:
        return self._control(BREAKER_SEQ_NAME)

    @property
    def logs(self) -> str:
        return f"{self.run}/{LOGS_DIR}/"

    def log(self, generation: int) -> str:
        """The tail of a generation's trainer output (`respawn.pod.logtail`)."""
        return f"{self.logs}g{generation:06d}.log"

    def parse_log_key(self, key: str) -> int | None:
        """The generation of a log key in its one spelling (`log(g)`): a planted `g0000001.log`
        is not a second log of generation 1 that could push real ones out of retention."""
        m = re.fullmatch(r"g(\d{6,10})\.log", key.removeprefix(self.logs))
        if not key.startswith(self.logs) or m is None:
            return None
        generation = int(m.group(1))
        return generation if key == self.log(generation) else None

    def pod_spec(self, generation: int) -> str:
        """The pod spec the controller launched a generation with (its sha256 is in the pod's
        environment)."""
        return f"{self.run}/pods/g{generation:06d}.json"

    @property
    def checkpoints(self) -> str:
        return f"{self.run}/checkpoints/"

    def step_prefix(self, step: int) -> str:
        return f"{self.run}/checkpoints/{step_dirname(step)}/"

    def step_file(self, step: int, path: str) -> str:
        return self.step_prefix(step) + path

    def manifest(self, step: int) -> str:
        """The old layout's one manifest per step (still read; no longer written)."""
        return self.step_prefix(step) + "MANIFEST.json"

    def upload_dir(self, generation: int, token: str) -> str:
        """A writer's own directory inside a step: no other writer can overwrite its bytes."""
        return f"g{generation:06d}-{token}/"

    def manifest_for(self, step: int, generation: int, token: str) -> str:
        return self.step_prefix(step) + f"MANIFEST-g{generation:06d}-{token}.json"

    def parse_manifest_key(self, key: str) -> tuple[int, int | None] | None:
        """(step, generation) of a manifest key of this run (generation None: old layout)."""
        if not key.startswith(self.checkpoints):
            return None
        parts = key[len(self.checkpoints) :].split("/")
        if len(parts) != 2:
            return None
        step = parse_step_dirname(parts[0])
        m = _MANIFEST_NAME.match(parts[1])
        if step is None or m is None:
            return None
        return step, int(m.group("gen")) if m.group("gen") else None

    def object_key(self, manifest: Manifest, path: str) -> str:
        return self.step_prefix(manifest.step) + manifest.prefix + path

    @property
    def quarantine(self) -> str:
        return f"{self.run}/{QUARANTINE_DIR}/"

    def quarantine_for(self, manifest_key: str) -> str:
        name = manifest_key[len(self.checkpoints) :].replace("/", "--")
        return f"{self.quarantine}{name}"

    @property
    def repairs(self) -> str:
        return f"{self.run}/{REPAIRS_DIR}/"
