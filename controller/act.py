"""act: carry out a plan. The only stage of a tick that changes the world.

Order matters: terminations first (a failed one cancels the launch, so there are never two
instances at once), and the ledger — which claims the new generation and so fences the old pod
— is written before the launch, then again with the instance the launch produced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from respawn.controller.config import FleetConfig, RunConfig
from respawn.controller.launch import MissingSecretError, missing_launch_secrets, provision
from respawn.controller.lease import Lease
from respawn.controller.ledger import (
    StaleLedgerError,
    find_ledger,
    read_halt,
    write_breaker,
    write_ledger,
)
from respawn.controller.model import (
    Action,
    ActionResult,
    Alert,
    BreakerHalt,
    Halt,
    Health,
    LaunchRecord,
    Ledger,
    Notify,
    Plan,
    Provision,
    RepairPointer,
    RestartInPlace,
    Rollback,
    Terminate,
    describe,
)
from respawn.controller.notify import WebhookError, post_webhook
from respawn.controller.redact import Redactor
from respawn.provisioning.base import Provider, ProviderError, WithTrainerControl
from respawn.store.schema import utcnow
from respawn.store.store import CheckpointStore, CorruptError, StoreError

log = logging.getLogger("respawn.controller")


def retention(store: CheckpointStore, run: RunConfig, generation: int) -> None:
    """Old steps are deleted here, by the controller: a pod's key needs no delete capability
    (docs/keys.md). Only on manifests no launched generation (`generation`: the ledger's)
    or step beyond target_step could have made. A failure is retried next tick; it never
    fails the tick."""
    policy = run.pod.checkpoints
    try:
        gone = store.gc(
            policy.keep_last,
            keep_every=policy.keep_every,
            max_step=run.target_step,
            max_generation=generation,
        )
    except Exception as e:  # never the tick's end: the ledger this tick keeps is saved next
        log.warning("%s: retention failed (next tick retries): %s", run.name, e)
        return
    if gone:
        log.info("%s: retention removed steps %s", run.name, gone)
    try:
        old_logs = store.old_logs(LOG_GENERATIONS_KEPT, generation)
        if old_logs:
            store.backend.delete(old_logs)
    except Exception as e:
        log.warning("%s: old pod logs not deleted (next tick retries): %s", run.name, e)


#: Generations whose trainer log (`respawn logs`) is kept; older ones are deleted.
LOG_GENERATIONS_KEPT = 5


def sync_fence(store: CheckpointStore, generation: int) -> None:
    """Make the fence say the ledger's generation: a store from before the fence existed gets
    one, and a fence a pod key made up (it is plain JSON) lasts one tick at most. Only with a
    trusted ledger (a fence above an unsigned ledger is how a lost ledger shows)."""
    if generation <= 0:
        return
    try:
        try:
            fence = store.read_fence()
        except CorruptError:
            fence = None
        if fence is None or fence.generation != generation:
            store.write_fence(generation)
    except StoreError as e:  # the next tick tries again
        log.warning(
            "%s: the fence could not be brought to generation %d: %s", store.run, generation, e
        )


def _record_launch(ledger: Ledger, generation: int, **update: object) -> Ledger:
    launches = list(ledger.launches)
    for idx in range(len(launches) - 1, -1, -1):
        if launches[idx].generation == generation:
            launches[idx] = launches[idx].model_copy(update=update)
            break
    else:
        launches.append(LaunchRecord.model_validate({"generation": generation, **update}))
    return ledger.model_copy(update={"launches": tuple(launches)})


def _unclaimed(ledger: Ledger, before: Ledger, generation: int, claimed: bool) -> Ledger:
    """The plan's ledger without a launch that never started: its generation unclaimed
    (unless this tick's rollback already claimed it) and nothing counted for it."""
    launches = tuple(lr for lr in ledger.launches if lr.generation != generation)
    keep = ledger.generation if claimed else before.generation
    return ledger.model_copy(
        update={
            "launches": launches,
            "generation": keep,
            "wandb_run_id": before.wandb_run_id,
            "progress": before.progress,
        }
    )


class _Actor:
    """Carries out one plan's actions in order, keeping the ledger it will write."""

    def __init__(
        self,
        run: RunConfig,
        fleet: FleetConfig,
        store: CheckpointStore | None,
        providers: Mapping[str, Provider | Exception],
        ledger: Ledger,
        environ: Mapping[str, str],
        before: Ledger,
        lease: Lease | None,
    ) -> None:
        """`ledger`: the plan's, to write; `before`: the ledger as observed (its version is
        the one the first write goes over)."""
        self.run, self.fleet, self.store = run, fleet, store
        self.providers, self.ledger, self.environ = providers, ledger, environ
        self.before, self.version, self.lease = before, before.version, lease
        self.claimed: set[int] = set()
        self.termination_failed = False
        self.stopped: StoreError | None = None
        self.rollback_failed = False
        # Every text this actor reports or stores passes here first (issue: secrets never leave).
        self.redact = Redactor.from_fleet(fleet, environ)

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None or isinstance(provider, Exception):
            raise ProviderError(f"{name}: {provider or 'not configured'}")
        return provider

    def save_ledger(self) -> None:
        if self.store is None:
            raise StoreError("checkpoint store unavailable: cannot write the ledger")
        self._still_ours()
        # Redacted as a whole: a pod's message or a provider's error may quote a secret.
        doc = self.redact.deep(self.ledger.model_dump(mode="json", by_alias=True))
        written = write_ledger(self.store, Ledger.model_validate(doc), self.version)
        self.version = written.version

    def claim(self, generation: int) -> None:
        """Claim a generation: the ledger (the controller's record), then the fence document
        pods read (`RUN/control/fence.json`). A fence that cannot be written stops the
        action: an old pod would not know it is fenced."""
        self.save_ledger()
        self.claimed.add(generation)
        if self.store is not None:
            self.store.write_fence(generation)

    def _unclaim(self, generation: int) -> None:
        """A launch skipped before its create is no launch (`cost.rented`)."""
        launches = tuple(lr for lr in self.ledger.launches if lr.generation != generation)
        self.ledger = self.ledger.model_copy(update={"launches": launches})

    def _still_ours(self) -> None:
        """Before every change: this tick still holds the run. Once it does not (the lease
        was lost, the ledger moved), nothing more is done."""
        if self.stopped is not None:
            raise self.stopped
        try:
            if self.lease is not None:
                self.lease.check()
            if self.store is not None:
                current = find_ledger(self.store)
                found = current.version if current is not None else 0
                if found != self.version:
                    raise StaleLedgerError(
                        f"the ledger changed under this tick (version {found}, read "
                        f"{self.version}): another tick acted on this run; stopping"
                    )
        except StoreError as e:
            self.stopped = e
            raise

    def do(self, action: Action) -> str:
        """Carry out one action; return what happened, or raise."""
        if isinstance(action, Terminate | Provision | RestartInPlace | Rollback | RepairPointer):
            self._still_ours()
        match action:
            case Terminate():
                try:
                    self._provider(action.provider).terminate(action.instance_id)
                except ProviderError:
                    self.termination_failed = True
                    raise
                return action.reason
            case Provision():
                if self.termination_failed:
                    # Keep the generation claim (it fences the instance we failed to stop),
                    # but a launch that never happened must not count against the budget.
                    self._unclaim(action.generation)
                    raise ProviderError("skipped: a termination failed (never two at once)")
                if self.rollback_failed:
                    self._unclaim(action.generation)
                    raise StoreError("skipped: the rollback failed (it would resume the bad step)")
                if self.store is not None:
                    order = read_halt(self.store)  # `terminate` may have run since observe
                    if order is not None and order.halted:
                        self._unclaim(action.generation)
                        raise ProviderError(f"skipped: stopped by hand ({order.reason})")
                missing = missing_launch_secrets(self.fleet, self.run, self.environ)
                if missing is not None:
                    claimed = action.generation in self.claimed
                    self.ledger = _unclaimed(self.ledger, self.before, action.generation, claimed)
                    raise missing
                try:
                    self.claim(action.generation)  # first: it fences the old pod
                except StoreError as e:
                    self.stopped = e  # a stale plan must not launch, nor write later
                    raise
                gen = action.generation
                try:
                    if self.store is None:
                        raise StoreError("checkpoint store unavailable: cannot launch")
                    inst, offer = provision(
                        self.fleet,
                        self.run,
                        self.store,
                        self.providers,
                        gen,
                        self.environ,
                        action.wandb_run_id,
                    )
                except (ProviderError, MissingSecretError, StoreError) as e:
                    # Until this reaches the ledger, the saved claim counts as a launch.
                    self.ledger = _record_launch(self.ledger, gen, error=self.redact(str(e)))
                    raise
                self.ledger = _record_launch(
                    self.ledger,
                    gen,
                    provider=inst.provider,
                    instance_id=inst.id,
                    price_per_hour=offer.price_per_hour,
                    market=offer.market,
                )
                where = f"{inst.provider}:{inst.id} {inst.name}"
                return f"{where} at ${offer.price_per_hour:g}/h {offer.market}"
            case Rollback():
                try:
                    if self.store is None:
                        raise StoreError("checkpoint store unavailable: cannot roll back")
                    # Claim the new generation first: pods read the fence written with it,
                    # so the old pod stops before it could publish a step of the streak over
                    # the rolled-back pointer.
                    self.claim(action.generation)
                    self.store.rollback_pointer(
                        action.to_step, action.generation, writer="respawn-controller:rollback"
                    )
                except Exception:
                    self.rollback_failed = True
                    # Not done, so not recorded: the next tick sees the streak and tries again.
                    self.ledger = self.ledger.model_copy(
                        update={"rollbacks": self.ledger.rollbacks[:-1]}
                    )
                    raise
                return f"pointer now at step {action.to_step}"
            case RestartInPlace():
                provider = self._provider(action.provider)
                if not isinstance(provider, WithTrainerControl):
                    raise ProviderError(f"{action.provider} cannot restart a trainer in place")
                provider.restart_trainer(action.instance_id, action.host_keys)
                return action.reason
            case RepairPointer():
                if self.store is None:
                    raise StoreError("checkpoint store unavailable: cannot rebuild the pointer")
                rebuilt = self.store.rebuild_pointer(
                    action.generation, writer="respawn-controller:repair"
                )
                if rebuilt is not None:
                    return f"latest.json rebuilt at step {rebuilt.step} ({rebuilt.manifest})"
                if self.store.pointer_or_error()[0] is not None:
                    return "a pod published meanwhile: its pointer stands"
                kept = self.store.set_pointer_aside(
                    action.generation, writer="respawn-controller:repair"
                )
                if kept is not None:
                    return f"latest.json set aside as {kept}: no step has a manifest"
                raise StoreError(
                    "no step's manifest matches the store's listing; a new pod restores the "
                    "newest step that verifies in full and rebuilds the pointer"
                )
            case Alert():
                log.warning("ALERT %s", self.redact(action.message))
                return ""
            case Halt():
                if self.store is not None:
                    at = self.ledger.halted_at or utcnow()
                    write_breaker(self.store, BreakerHalt(halted=action.reason, at=at))
                return action.reason
        raise AssertionError(action)


def _send(told: Notify, fleet: FleetConfig, actor: _Actor, previous: Ledger) -> ActionResult:
    try:
        return ActionResult(
            action=told,
            ok=True,
            detail=post_webhook(fleet.notify, told, actor.environ, actor.redact),
        )
    except WebhookError as e:
        # Not told, so not remembered: the next tick tries again.
        actor.ledger = actor.ledger.model_copy(update={"notified": previous.notified})
        return ActionResult(action=told, ok=False, detail=str(e))


def act(
    plan: Plan,
    run: RunConfig,
    fleet: FleetConfig,
    store: CheckpointStore | None,
    providers: Mapping[str, Provider | Exception],
    previous_ledger: Ledger,
    environ: Mapping[str, str] | None = None,
    lease: Lease | None = None,
) -> list[ActionResult]:
    """`previous_ledger`: the ledger as observed; its version is the only one this tick
    writes over. `lease`: the run's tick lease, checked before every change."""
    env = os.environ if environ is None else environ
    actor = _Actor(run, fleet, store, providers, plan.ledger, env, previous_ledger, lease)
    results: list[ActionResult] = []
    for action in plan.actions:
        try:
            results.append(ActionResult(action=action, ok=True, detail=actor.do(action)))
        except (ProviderError, MissingSecretError, StoreError) as e:
            detail = actor.redact(str(e))
            log.error("%s failed: %s", actor.redact(describe(action)), detail)
            results.append(ActionResult(action=action, ok=False, detail=detail))
        except Exception as e:  # a bug or an unmapped SDK error: report it, finish the tick
            detail = actor.redact(f"unexpected {type(e).__name__}: {e}")
            log.error("%s failed: %s", actor.redact(describe(action)), detail)
            results.append(ActionResult(action=action, ok=False, detail=detail))
    if store is not None and plan.verdict.health is not Health.UNKNOWN and actor.stopped is None:
        retention(store, run, actor.ledger.generation)
    trusted = plan.verdict.ledger_trusted
    if (
        store is not None
        and trusted
        and actor.stopped is None
        and plan.verdict.health is not (Health.UNKNOWN)
    ):
        sync_fence(store, actor.ledger.generation)
    if plan.notify is not None and actor.stopped is None:  # a stale tick tells nobody
        results.append(_send(plan.notify, fleet, actor, previous_ledger))
    if store is not None and trusted and actor.stopped is None and actor.ledger != previous_ledger:
        try:
            actor.save_ledger()
        except StoreError as e:
            fail = Alert(message="ledger write failed")
            results.append(ActionResult(action=fail, ok=False, detail=str(e)))
    return results
