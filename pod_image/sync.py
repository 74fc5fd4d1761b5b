"""Publishing from the pod: the newest complete step, from a thread of its own.

The supervisor asks for a round and waits (`sync_and_wait`), never longer than a deadline and,
without one, only until SIGTERM: a long upload never delays the reaction to a signal. Files →
manifest → pointer is the store's protocol (`CheckpointStore.publish`); this module decides
what to publish and when, cleans the pod's disk, and runs the retention safety net.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time

from respawn.pod.context import PodContext
from respawn.store.disk import (
    complete_steps,
    keep_published,
    restore_in_place,
    snapshot,
    step_dirs,
    why_not_complete,
)
from respawn.store.progress import TransferProgress
from respawn.store.store import BackwardsError, FencedError, StoreError

log = logging.getLogger("respawn.pod")


class StepSync:
    def __init__(
        self,
        ctx: PodContext,
        resume_step: int | None,
        lock: threading.Lock,
        stop: threading.Event,
        fenced: threading.Event,
        done: threading.Event,
    ) -> None:
        self.ctx = ctx
        self.published = resume_step  # newest step in the store (under `lock`)
        self.disk_step = resume_step  # newest step directory seen on disk (under `lock`)
        self.step_seen_at = time.monotonic()  # when a new step directory last appeared
        self._lock = lock
        self.stop, self.fenced, self.done = stop, fenced, done
        # Requests: the supervisor asks, the sync thread publishes; `_synced` counts rounds.
        self._cond = threading.Condition()
        self._asked = 0
        self._synced = 0
        self._writer_done = False
        self._publishes_since_gc = 0
        self._kept_lock = threading.Lock()  # the published copy of files overwritten in place
        self.last_error: str | None = None  # why the last publish failed; None once one works
        # Why the newest step on disk has stayed incomplete this long ("" when none has): the
        # heartbeat carries it, so a layout that never completes is named, not a silent stall.
        self.stuck = ""
        # The step a (re)started trainer loads, and the steps on disk when it started: the
        # pinned step stays on disk until this trainer's own newer step is published.
        self._pinned: int | None = None
        self._pinned_leftovers: frozenset[int] | None = frozenset()

    def pin_resume(self) -> int | None:
        """The step a (re)starting trainer resumes from, pinned: it is never cleaned while
        that trainer may still be loading it. Read and pinned at once, so a publish landing
        in between cannot clean it first. Steps a crashed trainer left newer than it do not
        count as the new trainer's progress (it rewrites them under the same numbers)."""
        try:
            leftovers: frozenset[int] | None = frozenset(
                step_dirs(self.ctx.workdir, self.ctx.pod.checkpoints.sources)
            )
        except OSError as e:
            log.warning("cannot list the checkpoint directories (%s): keeping the resume step", e)
            leftovers = None  # unknown: pinned for this trainer's whole life
        with self._lock:
            self._pinned, self._pinned_leftovers = self.published, leftovers
            return self.published

    def restore_in_place(self) -> None:
        """Before a trainer (re)starts: a file overwritten in place that the last trainer left
        torn (it died mid-save) is put back as the published step, which it resumes from."""
        with self._lock:
            published = self.published
        with self._kept_lock:
            back = restore_in_place(self.ctx.workdir, self.ctx.pod.checkpoints.sources, published)
        for path in back:
            log.warning("%s was left half written: put back as published step %s", path, published)

    def unpublished(self) -> list[int]:
        """Complete steps on disk newer than the newest published one, oldest first (the
        trainer has exited: no quiet period needed)."""
        done = complete_steps(self.ctx.workdir, self.ctx.pod.checkpoints.sources, float("inf"))
        with self._lock:
            published = self.published
        return [s.step for s in done if published is None or s.step > published]

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def loop(self) -> None:
        interval = self.ctx.pod.sync_interval.total_seconds()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._asked > self._synced or self.done.is_set(), interval
                )
                if self.done.is_set() or self.fenced.is_set():
                    return
                asked, writer_done = self._asked, self._writer_done
            self.sync(writer_done)
            with self._cond:
                self._synced = max(self._synced, asked)
                self._cond.notify_all()

    def sync_and_wait(self, writer_done: bool = False, deadline: float | None = None) -> bool:
        """Ask the sync thread for a round (after any in flight) and wait for it, at most until
        `deadline` (monotonic) and, without one, only while no SIGTERM arrives."""
        with self._cond:
            self._asked += 1
            self._writer_done = self._writer_done or writer_done
            ticket = self._asked
            self._cond.notify_all()
            while self._synced < ticket:
                if (deadline is None and self.stop.is_set()) or self.fenced.is_set():
                    return False  # a fenced pod's sync thread has stopped: no round will come
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _note_stuck(self, newest: int | None, newest_complete: int | None, now: float) -> None:
        """Name a step on disk, newer than anything published, that stays incomplete for
        ten sync intervals past its quiet period (a trainer saves in seconds, not that)."""
        sources = self.ctx.pod.checkpoints.sources
        quiet = max((s.quiet_for.total_seconds() for s in sources if s.quiet_for), default=0.0)
        after = 10 * self.ctx.pod.sync_interval.total_seconds() + quiet
        waited = time.monotonic() - self.step_seen_at
        stuck = ""
        if (
            newest is not None
            and (newest_complete is None or newest > newest_complete)
            and (self.published is None or newest > self.published)
            and waited >= after
        ):
            why = why_not_complete(self.ctx.workdir, sources, newest, now)
            if why is not None:
                stuck = f"step {newest} on disk is not complete after {waited:.0f}s: {why}"
        if stuck and not self.stuck:
            log.warning("%s", stuck)  # once per episode; the heartbeat carries it on
        with self._lock:
            self.stuck = stuck

    def sync(self, writer_done: bool = False) -> None:
        """Publish the newest complete step. `writer_done`: the trainer exited cleanly, so a
        quiet period is no longer needed to know its files are whole."""
        try:
            self._sync(writer_done)
        except OSError as e:
            # The trainer may delete its own old checkpoints while we look at them.
            log.warning("sync round failed (will retry): %s", e)
        except Exception:
            # Whatever a trainer left on disk, the sync thread must live: a dead one leaves
            # every later wait for a round (a restart, the finish) waiting until SIGTERM.
            log.exception("sync round failed (will retry)")

    def _sync(self, writer_done: bool) -> None:
        pod, workdir = self.ctx.pod, self.ctx.workdir
        on_disk = step_dirs(workdir, pod.checkpoints.sources)
        newest_dir = max(on_disk, default=None)
        if newest_dir is not None and (self.disk_step is None or newest_dir > self.disk_step):
            with self._lock:
                self.disk_step = newest_dir
            self.step_seen_at = time.monotonic()
        now = float("inf") if writer_done else time.time()
        done = complete_steps(workdir, pod.checkpoints.sources, now)
        self._note_stuck(newest_dir, done[-1].step if done else None, now)
        if not done or (self.published is not None and done[-1].step <= self.published):
            return
        step = snapshot(workdir, done[-1], pod.checkpoints.sources, now)
        if step is None:
            log.info("step %d changed while it was copied aside; next round", done[-1].step)
            return
        bar = TransferProgress(f"push step {step.step}", step.total_bytes, stream=sys.stdout)
        try:
            result = self.ctx.store.publish(
                step.step,
                step.files,
                self.ctx.generation,
                self.ctx.writer,
                self.ctx.wandb_run_id,
                progress=bar,
            )
        except FencedError as e:
            log.warning("%s; stopping", e)
            self.fenced.set()
            return
        except BackwardsError as e:
            log.warning("not publishing: %s", e)
            self.last_error = str(e)
            return
        except StoreError as e:
            log.warning("publishing step %d failed, will retry: %s", step.step, e)
            self.last_error = str(e)
            return
        self.last_error = None
        bar.finish()
        with self._kept_lock:
            keep_published(workdir)
        log.info(
            "published step %d (%d B sent, %d B unchanged)",
            step.step,
            result.bytes_sent,
            result.bytes_copied,
        )
        with self._lock:
            self.published = step.step
            leftovers = self._pinned_leftovers
            if self._pinned is not None and leftovers is not None and step.step not in leftovers:
                self._pinned = None  # the new trainer wrote a step of its own: it has loaded
        self.clean_disk()
        if not getattr(self.ctx.store.backend, "can_delete", True):
            return  # a pod key without delete: the controller applies retention
        policy = pod.checkpoints
        self._publishes_since_gc += 1
        if self._publishes_since_gc < policy.pod_retention_every:
            return  # the controller applies retention every tick; this is the safety net
        self._publishes_since_gc = 0
        try:
            gone = self.ctx.store.gc(policy.keep_last, keep_every=policy.keep_every)
            if gone:
                log.info("retention removed steps %s from the store", gone)
        except StoreError as e:
            log.warning("retention failed (will retry): %s", e)

    def clean_disk(self) -> None:
        """Keep the newest `keep_local` published steps and the step a starting trainer
        loads (`pin`); never touch anything newer than the newest published step."""
        with self._lock:
            published, pinned = self.published, self._pinned
        if published is None:
            return
        on_disk = step_dirs(self.ctx.workdir, self.ctx.pod.checkpoints.sources, deletable=True)
        older = sorted((s for s in on_disk if s <= published), reverse=True)
        for s in older[self.ctx.pod.checkpoints.keep_local :]:
            if s == pinned:
                continue
            for d in on_disk[s]:
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    d.unlink(missing_ok=True)
