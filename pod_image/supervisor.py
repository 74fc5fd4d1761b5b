"""The pod's supervisor: runs the trainer, publishes each new complete step, beats the heart.

- The trainer runs in its own process group, so stopping it also stops whatever it spawned
  (an inference server, dataloader workers).
- A sync thread (`respawn.pod.sync`) publishes the newest complete step every `sync_interval`
  (files → manifest → pointer), beside the main loop, so a long upload never delays the
  reaction to a signal.
- A heartbeat thread writes `heartbeat.json` every `heartbeat_interval`, even while a long
  upload runs, and checks fencing: once a newer generation appears, this pod stops writing,
  stops the trainer and exits.
- SIGTERM (spot reclaim): the trainer gets SIGTERM at once; whatever is left of `term_grace`
  after it exits goes to publishing its newest complete step. SIGUSR1 (sent through the
  pidfile): restart the trainer in place.
- A crashed trainer is restarted from the newest published step, up to `max_trainer_restarts`;
  a hung one (no new step directory for `hang_after`) is restarted too. The step it resumes
  from stays on disk until it has published a step of its own (it may still be loading it).
- A trainer that exits 0 is `finished` only once its last complete step is published: a
  failing store is retried until `finish_grace`, then the pod reports `failed` with the steps
  that exist only on its disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from respawn.contract.pod import (
    ENV_PIDFILE,
    ENV_RESUME_STEP,
    SUPERVISOR_PIDFILE,
    PodSpec,
    render_command,
)
from respawn.pod.context import PodContext
from respawn.pod.dispatch import TickRequester
from respawn.pod.gpu_watch import GpuWatch
from respawn.pod.gpu_watch import query as gpu_query
from respawn.pod.interpreter import trainer_python
from respawn.pod.logtail import LogTail, pod_secrets
from respawn.pod.start_failures import StartFailures
from respawn.pod.sync import StepSync
from respawn.store.schema import Phase, utcnow
from respawn.store.store import FencedError, StoreError

log = logging.getLogger("respawn.pod")


class Supervisor:
    def __init__(self, ctx: PodContext, resume_step: int | None, env: dict[str, str]) -> None:
        self.ctx = ctx
        dispatch = ctx.pod.dispatch
        self.requester = TickRequester(dispatch, ctx.run, env) if dispatch else None
        # The dispatch token is the pod's, not the trainer's.
        self.env = {k: v for k, v in env.items() if not dispatch or k != dispatch.token_env}
        idle = ctx.pod.gpu_idle_after
        self.gpu_watch = GpuWatch(idle.total_seconds() if idle else None)
        self._gpu_trip: str | None = None
        self.phase: Phase = "training"
        self.message = ""
        self.will_repeat = False
        self.restarts = 0
        self._lock = threading.Lock()
        self._beat_lock = threading.Lock()
        self._log_lock = threading.Lock()  # one log upload at a time: an older never lands last
        self._stop = threading.Event()  # set on SIGTERM
        self._restart = threading.Event()  # set on SIGUSR1
        self._fenced = threading.Event()
        self._done = threading.Event()  # the main loop has returned
        self._proc: subprocess.Popen[bytes] | None = None
        self.tail = LogTail(pod_secrets(env, ctx.pod.secret_env))
        self._pump: threading.Thread | None = None
        self.start_failures = StartFailures()
        # (monotonic time, disk step, output version) when the trainer last started.
        self._started: tuple[float, int | None, int] = (0.0, None, 0)
        self.steps = StepSync(ctx, resume_step, self._lock, self._stop, self._fenced, self._done)

    # -- heartbeat -----------------------------------------------------------------------

    def beat(self) -> None:
        """Write one heartbeat unless fenced (checked first, so a stale pod never writes)."""
        # One writer at a time: a beat built before a phase change must not land after it.
        with self._beat_lock:
            if self._fenced.is_set():
                return
            self._beat_unlocked()

    def _beat_unlocked(self) -> None:
        try:
            self.ctx.store.check_fence(self.ctx.generation)
            with self._lock:
                hb = self.ctx.heartbeat(
                    self.phase,
                    step=self.steps.disk_step,
                    published_step=self.steps.published,
                    message=self.message or self.steps.stuck,
                    will_repeat=self.will_repeat,
                )
            self.ctx.store.write_heartbeat(hb)
        except FencedError as e:
            log.warning("%s; stopping", e)
            self._fenced.set()
        except StoreError as e:
            log.warning("heartbeat failed (will retry): %s", e)

    def _heartbeat_loop(self) -> None:
        interval = self.ctx.pod.heartbeat_interval.total_seconds()
        while not self._fenced.is_set() and not self._done.wait(interval):
            self.beat()
            self.ship_log()
            self._tick_if_overdue()

    def ship_log(self) -> None:
        """Upload the trainer's output tail if it changed (`respawn logs`). Its own key per
        generation, so it never races another pod; a store error only delays it to the next
        beat, and training never waits on it."""
        with self._log_lock:
            if self._fenced.is_set():
                return
            pending = self.tail.pending()
            if pending is None:
                return
            version, data = pending
            try:
                self.ctx.store.write_log(self.ctx.generation, data)
            except StoreError as e:
                log.warning("uploading the trainer's log failed (will retry): %s", e)
                return
            self.tail.shipped(version)

    def _tick_if_overdue(self) -> None:
        """No controller tick for `overdue_after` (GitHub dropped or delayed the cron, or
        disabled the schedule): ask for one."""
        if self.requester is None or self.requester.spec.overdue_after is None:
            return
        try:
            record = self.ctx.store.read_tick()
        except StoreError as e:
            log.warning("cannot read the last tick time: %s", e)
            return
        if self.requester.overdue(record.at if record else None, utcnow()):
            self.requester.request("controller ticks overdue")

    # -- GPU watchdog --------------------------------------------------------------------

    def _gpu_loop(self) -> None:
        interval = self.ctx.pod.gpu_poll_interval.total_seconds()
        while not self._done.wait(interval):
            samples = gpu_query()
            if samples is None:
                continue
            with self._lock:
                if self._gpu_trip is None:
                    self._gpu_trip = self.gpu_watch.check(samples, time.monotonic())

    def _take_gpu_trip(self) -> str | None:
        with self._lock:
            why, self._gpu_trip = self._gpu_trip, None
            return why

    # -- trainer -------------------------------------------------------------------------

    def _start_trainer(self) -> None:
        self.steps.restore_in_place()
        # Read once, pinned at once: a publish landing meanwhile must not clean what it loads.
        resume = self.steps.pin_resume()
        command = render_command(
            self.ctx.pod,
            self.ctx.run,
            self.ctx.generation,
            self.ctx.workdir,
            resume,
            trainer_python(self.ctx.pod, self.env),
        )
        log.info("starting trainer (resume step %s): %s", resume, command)
        with self._lock:
            self.gpu_watch.reset()
            self._gpu_trip = None
        self._proc = subprocess.Popen(
            shlex.split(command),
            cwd=self.ctx.workdir,
            env={**self.env, ENV_RESUME_STEP: str(resume or 0)},
            process_group=0,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # The output passes through to the pod's own; its tail is kept for a failure's reason.
        out = getattr(sys.stdout, "buffer", None)
        self._pump = threading.Thread(
            target=self.tail.pump, args=(self._proc.stdout, out), name="trainer-out", daemon=True
        )
        self._pump.start()
        self.steps.step_seen_at = time.monotonic()
        self._started = (time.monotonic(), self.steps.disk_step, self.tail.version)

    def _stop_trainer(self, grace: float) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("trainer ignored SIGTERM for %.0fs; killing it", grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    # -- main loop -----------------------------------------------------------------------

    def _set_phase(self, phase: Phase, message: str = "") -> None:
        with self._lock:
            self.phase, self.message = phase, message

    def _give_up(self, why: str, will_repeat: bool = False) -> int:
        """Tell the controller (a `failed` heartbeat means dead: replace the instance; with
        `will_repeat`, halt the run: a new instance would fail the same way)."""
        self.will_repeat = will_repeat
        self._set_phase("failed", why)
        self.beat()
        log.error("%s; giving up", why)
        if self.requester is not None:
            self.requester.request(f"trainer failed: {why}")
        return 1

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGUSR1, lambda *_: self._restart.set())
        pod = self.ctx.pod
        self.beat()
        if self._fenced.is_set():
            return 0
        beater = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beater.start()
        syncer = threading.Thread(target=self.steps.loop, name="sync", daemon=True)
        syncer.start()
        if pod.watch_gpus:
            threading.Thread(target=self._gpu_loop, name="gpu-watch", daemon=True).start()
        pidfile = write_pidfile()
        try:
            return self._loop(pod)
        except Exception:
            # Never leave a trainer running unsupervised (its checkpoints would go nowhere).
            log.exception("supervisor failed")
            self._stop_trainer(pod.term_grace.total_seconds())
            return self._give_up("supervisor failed; see the pod log")
        finally:
            self._done.set()
            self.steps.wake()
            beater.join(timeout=5)
            # The trainer's last words (its SIGTERM handler, a traceback) are uploaded too.
            if self._pump is not None:
                self._pump.join(timeout=2)
            self.ship_log()
            if pidfile is not None:
                pidfile.unlink(missing_ok=True)

    def _loop(self, pod: PodSpec) -> int:
        grace = pod.term_grace.total_seconds()
        hang_after = pod.hang_after.total_seconds() if pod.hang_after else None
        try:
            self._start_trainer()
        except (FileNotFoundError, PermissionError, ValueError) as e:
            # The command itself is wrong (no such program, not executable, bad quoting):
            # the next machine runs the same command.
            return self._give_up(f"the trainer command cannot start: {e}", will_repeat=True)
        while True:
            self._stop.wait(0.2)
            if self._fenced.is_set():
                self._stop_trainer(grace)
                log.warning("fenced: exited without writing")
                return 0
            if self._stop.is_set():
                return self._on_sigterm(grace)
            hung = (
                hang_after is not None and time.monotonic() - self.steps.step_seen_at > hang_after
            )
            gpu_trip = self._take_gpu_trip()
            if self._restart.is_set() or hung or gpu_trip:
                requested = self._restart.is_set()
                self._restart.clear()
                self._stop_trainer(grace)
                if not self.steps.sync_and_wait():
                    continue  # SIGTERM arrived meanwhile: handled at the top of the loop
                if hung or gpu_trip:
                    # A trainer that hangs again and again needs a new machine, not a loop.
                    self.restarts += 1
                    if self.restarts > pod.max_trainer_restarts:
                        what = "GPU watchdog tripped" if gpu_trip else "trainer hung"
                        return self._give_up(f"{what} {self.restarts} times")
                why = (
                    "restart requested"
                    if requested
                    else gpu_trip or f"no new step for {hang_after:.0f}s"
                )
                log.warning("%s: restarting the trainer from step %s", why, self.steps.published)
                self._start_trainer()
                continue
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                if not self.steps.sync_and_wait(writer_done=rc == 0):
                    continue
                if rc == 0:
                    return self._finish(pod)
                repeats = self._fails_at_start(rc)
                if repeats is not None:
                    return self._give_up(repeats, will_repeat=True)
                self.restarts += 1
                if self.restarts > pod.max_trainer_restarts:
                    return self._give_up(f"trainer exited {rc}, {self.restarts - 1} restarts")
                log.warning(
                    "trainer exited %d; restart %d from step %s",
                    rc,
                    self.restarts,
                    self.steps.published,
                )
                self._start_trainer()
                continue

    def _fails_at_start(self, rc: int) -> str | None:
        """The reason, when the trainer just failed at start the same way as last time."""
        started, disk_step, version = self._started
        # The last of its output may still be in the pipe (a child it left may hold it open).
        if self._pump is not None:
            self._pump.join(timeout=2)
        printed = self.tail.text() if self.tail.version > version else ""
        return self.start_failures.observe(
            rc, time.monotonic() - started, self.steps.disk_step != disk_step, printed
        )

    def _finish(self, pod: PodSpec) -> int:
        """The trainer exited cleanly: `finished` only once its last complete step is in the
        store. A store that fails is retried with backoff until `finish_grace`, said in the
        heartbeat; then `failed`, naming the steps only this disk holds."""
        grace = pod.finish_grace.total_seconds()
        deadline = time.monotonic() + grace
        until = utcnow() + pod.finish_grace
        pause = 1.0
        while True:
            left = self.steps.unpublished()
            if not left:
                with self._lock:
                    # A directory the trainer left incomplete is not a step it reached.
                    self.steps.disk_step = self.steps.published
                self._set_phase("finished")
                self.beat()
                log.info("trainer finished; last published step %s", self.steps.published)
                return 0
            if self._fenced.is_set():
                log.warning("fenced while publishing step %d: exited without writing", left[-1])
                return 0
            if self._stop.is_set():
                return self._on_sigterm(pod.term_grace.total_seconds())
            steps = ", ".join(map(str, left[-5:])) + (
                f" (+{len(left) - 5} older)" if left[5:] else ""
            )
            why = (self.steps.last_error or "not published yet")[:200]
            if time.monotonic() >= deadline:
                return self._give_up(
                    f"the trainer finished but step(s) {steps} could not be published within "
                    f"finish_grace ({grace:.0f}s): {why}; they exist only on this instance's disk"
                )
            self._set_phase(
                "publishing",
                f"publishing step {left[-1]}: store failing ({why}), "
                f"retrying until {until:%Y-%m-%dT%H:%M:%SZ}",
            )
            log.warning("%s", self.message)
            self.beat()
            if self._stop.wait(min(pause, max(0.0, deadline - time.monotonic()))):
                continue
            pause = min(pause * 2, 30.0)
            self.steps.sync_and_wait(writer_done=True, deadline=deadline)

    def _on_sigterm(self, grace: float) -> int:
        """The trainer is signalled at once; its final checkpoint is published with whatever
        is left of `term_grace` (a spot reclaim gives seconds, not minutes)."""
        deadline = time.monotonic() + grace
        log.info("SIGTERM: asking the trainer to checkpoint (%.0fs grace)", grace)
        asking = None
        if self.requester is not None:
            # The replacement is launched by a tick: ask for one now, not at the next cron.
            asking = self.requester.request_soon("SIGTERM: the instance is going away")
        self._set_phase("exiting", "SIGTERM")
        rc = self._stop_trainer(grace)
        if not self.steps.sync_and_wait(writer_done=rc == 0, deadline=deadline):
            log.warning("SIGTERM: the final publish did not finish within term_grace")
        self.beat()
        if asking is not None:
            asking.join(max(0.5, deadline - time.monotonic()))
        return 0


def write_pidfile() -> Path | None:
    """Where restart-in-place finds the supervisor (`kill -USR1 $(cat PIDFILE)`): a pattern
    match on the command line would also match the shell that runs it."""
    path = Path(os.environ.get(ENV_PIDFILE) or SUPERVISOR_PIDFILE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
    except OSError as e:
        log.warning("cannot write the pidfile %s (%s): restart in place is unavailable", path, e)
        return None
    return path
