"""observe: everything one tick needs to know about a run. Every failure becomes an entry in
`errors` (so the run is classified `unknown`), never a guess such as "no instances"."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from respawn.controller.classify import current_instances, merge_rows
from respawn.controller.config import RunConfig
from respawn.controller.ledger import find_ledger, read_halt
from respawn.controller.model import HaltOrder, Ledger, LedgerState, Observation, StoreRepairs
from respawn.controller.providers import MissingKeyError
from respawn.controller.seal import SealedBackend
from respawn.controller.store_repairs import read_store_repairs
from respawn.controller.wandb_health import degenerate, rolled_back_through, watched_run_ids
from respawn.controller.wandb_signal import WandbReader
from respawn.provisioning.base import Instance, Provider, can_restart
from respawn.store.schema import LatestPointer
from respawn.store.store import CheckpointStore, CorruptError, StoreError

log = logging.getLogger("respawn.controller")

Listings = Mapping[str, "Future[list[Instance]]"]


def trusted_pointer(
    store: CheckpointStore, pointer: LatestPointer | None, ledger: Ledger, signed: bool = False
) -> LatestPointer | None:
    """The pointer, if the controller may act on it. Any pod key can write latest.json, so a
    pointer is used only when its step's manifest exists and parses (a forged pointer at
    target_step would "finish" the run), and, when the ledger is signed, only when its
    generation is not above the ledger's (unsigned, such a pointer is how a lost ledger is
    noticed)."""
    if pointer is None:
        return None
    if signed and pointer.generation > ledger.generation:
        log.warning(
            "%s: ignoring latest.json of generation %d, above the ledger's %d",
            store.run,
            pointer.generation,
            ledger.generation,
        )
        return None
    try:
        manifest = store.read_manifest(pointer.step)
    except StoreError as e:
        log.warning("%s: ignoring latest.json: the manifest of its step: %s", store.run, e)
        return None
    if manifest is None or manifest.step != pointer.step:
        log.warning("%s: ignoring latest.json: step %d has no manifest", store.run, pointer.step)
        return None
    return pointer


def _repair(run: RunConfig) -> str:
    """The command that ends an `unknown` caused by one of the run's documents."""
    return f"`respawn ledger repair --run {run.name}`"


def _lost_pointer(
    store: CheckpointStore, why: str, errors: list[str], corrupt: bool = False
) -> str | None:
    """Why the pointer is lost and what the tick does about it (None: a missing pointer of a
    run not yet published, or no listing). One listing, only for a run without a pointer."""
    try:
        steps = store.manifested_steps()
    except StoreError as e:
        errors.append(f"listing steps (the pointer is not readable): {e}")
        return None
    if not steps and not corrupt:
        return None  # a run not yet published: nothing is lost
    if not steps:
        return f"{why}, and no step has a manifest yet: it is set aside, the next pod starts fresh"
    return f"{why}, but steps up to {steps[-1]} have manifests: latest.json is rebuilt from them"


def observe(
    run: RunConfig,
    store: CheckpointStore | Exception,
    providers: Mapping[str, Provider | Exception],
    listings: Listings | None = None,
    wandb: WandbReader | None = None,
) -> Observation:
    """`listings`: each provider's whole listing for this tick, already under way; without
    it, the run's providers are listed here."""
    errors: list[str] = []
    signed = False
    pointer_generation: int | None = None
    ledger, pointer, heartbeat = Ledger(run=run.name), None, None
    ledger_state: LedgerState = "unreadable"
    halt: HaltOrder | None = None
    repairs = StoreRepairs()
    warnings: list[str] = []
    pointer_lost: str | None = None
    fence_generation: int | None = None
    if isinstance(store, Exception):
        errors.append(f"checkpoint store: {store}")
    else:
        # A run's documents are independent reads (each a round trip to a bucket): at once.
        with ThreadPoolExecutor(max_workers=5) as pool:
            ledger_f = pool.submit(find_ledger, store)
            fence_f = pool.submit(store.read_fence)
            halt_f = pool.submit(read_halt, store)
            pointer_f = pool.submit(store.read_pointer)
            heartbeat_f = pool.submit(store.read_heartbeat)
        try:
            found = ledger_f.result()
            ledger, ledger_state = found or ledger, "ok" if found is not None else "missing"
        except StoreError as e:
            errors.append(f"ledger: {e} (nothing is overwritten until {_repair(run)})")
        try:
            halt = halt_f.result()
        except StoreError as e:
            errors.append(
                f"halt order: {e} (`respawn resume --run {run.name}` writes a new one, or "
                f"`respawn terminate --run {run.name}` to stop the run)"
            )
        # Verified by this controller's signature (`controller/seal.py`): pod-written
        # generations above it are ignored, not taken for a lost ledger.
        signed = ledger_state == "ok" and isinstance(store.backend, SealedBackend)
        try:
            raw_pointer = pointer_f.result()
            pointer_generation = raw_pointer.generation if raw_pointer is not None else None
            pointer = trusted_pointer(store, raw_pointer, ledger, signed)
            if raw_pointer is None:
                pointer_lost = _lost_pointer(store, f"{store.keys.latest} is missing", errors)
        except CorruptError as e:
            # Unreadable: a cache of the manifests, rebuilt from them when there are any.
            pointer_lost = _lost_pointer(store, str(e), errors, corrupt=True)
            if pointer_lost is None:  # no listing: nothing known to rebuild from
                errors.append(f"latest.json: {e} ({_repair(run)} sets it aside)")
        except StoreError as e:
            errors.append(f"latest.json: {e} ({_repair(run)} rebuilds it from the manifests)")
        try:
            fence = fence_f.result()
            fence_generation = fence.generation if fence is not None else None
        except StoreError as e:  # a fencing signal only: rewritten at the next claim
            warnings.append(f"fence: {e}")
        try:
            heartbeat = heartbeat_f.result()
        except StoreError as e:
            errors.append(f"heartbeat.json: {e} ({_repair(run)} sets it aside)")
        try:  # shown, never judged: a failure here is a warning, not an unknown run
            repairs = read_store_repairs(store, ledger.repairs_seen)
        except StoreError as e:
            warnings.append(f"store repairs not read: {e}")
    instances: list[Instance] = []
    for name in run.providers:
        provider = providers.get(name)
        if isinstance(provider, MissingKeyError) and name != run.providers[0]:
            # A fallback without its key is skipped, not a reason to stop judging the run.
            warnings.append(f"{provider}: fallback skipped")
            continue
        if isinstance(provider, Exception) or provider is None:
            why = str(provider or "not configured")
            # A provider's error already names it ("vast: ..."): never "vast: vast:".
            errors.append(why if why.startswith(f"{name}:") else f"{name}: {why}")
            continue
        try:
            pending = (listings or {}).get(name)
            every = pending.result() if pending is not None else provider.list_all()
            instances += [i for i in every if i.run == run.name]
        except Exception as e:  # any failure to list means we do not know what runs
            errors.append(f"{name}: listing instances failed: {e}")
    obs = Observation(
        run=run.name,
        pointer=pointer,
        heartbeat=heartbeat,
        instances=merge_rows(instances),
        ledger=ledger,
        ledger_state=ledger_state,
        ledger_signed=signed,
        pointer_generation=pointer_generation,
        halt=halt,
        errors=tuple(errors),
        warnings=tuple(warnings),
        store_repairs=repairs,
        pointer_lost=pointer_lost,
        fence_generation=fence_generation,
    )
    if wandb is not None and run.wandb is not None:
        ids = watched_run_ids(run, ledger)
        obs = obs.model_copy(
            update={"wandb": wandb.read(run, ids, tail_after=rolled_back_through(ledger))}
        )
        if degenerate(run.health.degenerate, obs) and not isinstance(store, Exception):
            # A rollback needs the published steps: one listing, only when one may happen.
            try:
                steps = tuple(store.manifested_steps())
                obs = obs.model_copy(update={"published_steps": steps})
            except StoreError as e:
                obs = obs.model_copy(update={"errors": (*obs.errors, f"listing steps: {e}")})
    current = current_instances(obs)
    shell_access = bool(current) and can_restart(providers.get(current[0].provider))
    return obs.model_copy(update={"shell_access": shell_access})
