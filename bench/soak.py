"""A seeded fault soak of the embedded default stack: several toy runs in one fleet, controller
ticks in a loop (sometimes two at once), faults drawn from a seeded RNG, invariants checked
after every tick.

    .venv/bin/python -m bench.soak --seed 1 --runs 3 --minutes 3

The stack is the demo's (examples/local.yaml through `demo_doc`): a file:// store, the local
process provider, the toy trainer, each run with its own seed and a longer target. The fault
schedule is a function of the seed and the tick number only (every tick draws the same
numbers whatever happened), so a seed names one sequence of faults; what the processes do
in between is timing. A fault with nothing to hit in its drawn run (no live pod) passes to
the next run, and with nothing to hit in any waits up to --fault-wait ticks (on a loaded
machine pods take longer to start: the seed's faults still bite); `--only`/`--skip` choose
the kinds drawn (one kind alone shows which invariants it breaks), `--ticks` bounds the
fault phase.

Faults: SIGKILL / SIGSTOP (SIGCONT later) / SIGTERM of a whole pod, of its supervisor, or of
its trainer; the run's store directory unreadable for a while (chmod 000: when run as root
the soak first drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH and re-executes itself, so a
mode means what it says), also sprung at the moment it hurts: as the next instance starts
(its restore) or as a trainer nears the target (the final save and publish); flipped bytes
in a checkpoint file (never the final step's); `latest.json`, the ledger or
the tick lease deleted or replaced by garbage (torn JSON, a naive timestamp, a 5,000-digit
integer, a lone surrogate); a tick run as the CLI runs it (`respawn reconcile`, in a
subprocess) and SIGKILLed mid-way.

Invariants, checked after each tick (a violation is kept with the seed, the tick and the
run's fault history):
  tick-completes     tick() returns a report for every run (no exception escapes it)
  one-instance       at most one live instance per run once a launch race settles
                     (--settle-ticks)
  pointer-verifies   a readable pointer names a manifest whose files verify (a step the soak
                     itself damaged is exempt); a pointer the soak did not garble parses
  never-backwards    the pointer never moves to a lower step unless the ledger records a
                     rollback to it (or every step it passed back over was damaged by the
                     soak)
  not-stuck          no run `unknown`/`halted` (or that no tick can act on: its lease
                     unusable; one lease TTL more) for more than --stuck-ticks ticks without
                     a reason naming a remedy command; a named remedy (`respawn ledger
                     repair`, `respawn resume`) is run as a person would, counted, and must
                     succeed and end the state within --stuck-ticks more ticks (ticks while
                     the soak holds the run's store away count toward neither)
  reaches-target     after the faults stop, every run finishes: the pointer names a verified
                     step >= target, and every step any of its trainers logged has the loss of
                     the uninterrupted run (`toy_trainer.trajectory`)
  no-leak            afterwards no process of any pod is left (none whose cwd is an instance
                     disk, none in a pod's session)

The tick lease's TTL is scaled like local.yaml's thresholds (--lease-ttl, default 20 s for
the product's 5 min): a killed tick's lease must expire within the soak.

Prints totals (ticks, faults by kind, recoveries, operator remedies, violations by invariant,
wall time) and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from respawn.controller import lease as lease_module
from respawn.controller.config import FleetConfig
from respawn.controller.ledger import read_ledger
from respawn.controller.model import Health, Ledger, RunReport
from respawn.controller.reconcile import tick
from respawn.examples.demo import demo_doc, read_metrics
from respawn.examples.toy_trainer import trajectory
from respawn.provisioning.local import LocalProvider, _session_processes
from respawn.store.backend import StoreError
from respawn.store.file_backend import FileBackend
from respawn.store.schema import step_dirname
from respawn.store.store import CheckpointStore

FAULTS = (
    "kill-pod",
    "kill-supervisor",
    "kill-trainer",
    "stop-pod",
    "term-pod",
    "term-trainer",
    "store-unreadable",
    "outage-at-restore",
    "outage-at-finish",
    "flip-bytes",
    "pointer-delete",
    "pointer-garbage",
    "ledger-delete",
    "ledger-garbage",
    "lease-garbage",
    "tick-killed",
)
PROCESS_FAULTS = (*FAULTS[:6], "tick-killed")
INVARIANTS = (
    "tick-completes",
    "one-instance",
    "pointer-verifies",
    "never-backwards",
    "not-stuck",
    "reaches-target",
    "no-leak",
)
STUCK = (Health.UNKNOWN, Health.HALTED)
BAD = (Health.DEAD, Health.STALLED, Health.UNKNOWN, Health.HALTED, Health.DEGENERATE)
# The documents item 5 of issue 18 names: each parses as JSON or fails to in its own way.
GARBAGE = (
    b"\x00\xffnot json at all",
    b'{"schema": 1, "run": ',
    b"[]",
    b'{"token": "t", "holder": "h", "expires_at": "2026-01-01T00:00:00", "schema": 1}',
    b'{"schema": 1, "step": ' + b"9" * 5000 + b"}",
    b'{"schema": 1, "run": "\\ud800", "holder": "\\ud800"}',
)
DAC_CAPS = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
PR_CAPBSET_DROP = 24
REMEDY = re.compile(r"`(respawn (?:ledger repair|resume)[^`]*)`")


# -- set-up ----------------------------------------------------------------------------------


def _has_dac_override() -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) & 0b110)


def drop_dac_and_reexec() -> None:
    """Root reads a chmod-000 directory anyway: drop the two capabilities that let it, from
    the bounding set (inherited by every pod), and start again without them."""
    if not _has_dac_override():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in DAC_CAPS:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            print(f"soak: cannot drop capability {cap}; store-unreadable faults will not bite")
            return
    os.execv(sys.executable, [sys.executable, "-m", "bench.soak", *sys.argv[1:]])


def fleet_doc(base: Path, runs: int, target: int, step_seconds: float) -> dict[str, Any]:
    """The demo's fleet with `runs` copies of its run, each with its own trainer seed."""
    doc = demo_doc(base)
    (template,) = doc["runs"]
    out = []
    for i in range(runs):
        run = json.loads(json.dumps(template))
        run["name"] = f"soak-{i}"
        run["target_step"] = target
        cmd = run["pod"]["command"]
        cmd = re.sub(r"--target-step \d+", f"--target-step {target}", cmd)
        cmd = re.sub(r"--seed \d+", f"--seed {run_seed(i)}", cmd)
        cmd = re.sub(r"--step-seconds [\d.]+", f"--step-seconds {step_seconds}", cmd)
        run["pod"]["command"] = cmd
        # The crash-loop breaker counts launches; the soak causes many on purpose.
        run["budget"]["max_launches_per_day"] = 10_000
        out.append(run)
    doc["runs"] = out
    return doc


def run_seed(i: int) -> int:
    return 7 + 11 * i


def set_lease_ttl(seconds: float) -> None:
    lease_module.TTL = timedelta(seconds=seconds)


# -- records ---------------------------------------------------------------------------------


@dataclass
class Fault:
    tick: int
    kind: str
    run: str
    detail: str


@dataclass
class Violation:
    invariant: str
    run: str
    tick: int
    detail: str
    history: list[Fault]

    def line(self, seed: int) -> str:
        faults = ", ".join(f"t{f.tick}:{f.kind}" for f in self.history[-6:]) or "none"
        return (
            f"  [{self.invariant}] seed {seed} tick {self.tick} {self.run}: {self.detail}\n"
            f"      last faults on {self.run}: {faults}"
        )


@dataclass
class RunState:
    name: str
    seed: int
    store: CheckpointStore
    root: Path
    high_water: int | None = None
    dup_ticks: int = 0
    stuck_ticks: int = 0
    skipped: str | None = None  # why the last tick could not act on the run
    remedied_at: int | None = None
    bad: bool = False
    health: Health | None = None
    reason: str = ""
    my_garbage: bytes | None = None  # the pointer bytes the soak wrote, while they last
    damaged: set[str] = field(default_factory=set)  # step directories the soak flipped
    verified: dict[tuple[str, float, int], str | None] = field(default_factory=dict)
    unreadable_until: float | None = None
    armed: tuple[str, float, set[str]] | None = None  # (kind, draw, instances known then)
    operating: bool = False  # a person is running a remedy: an armed outage waits for them
    reported: set[str] = field(default_factory=set)  # one violation per invariant episode


# -- the soak --------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.rng = random.Random(args.seed)
        doc = fleet_doc(base, args.runs, args.target, args.step_seconds)
        base.mkdir(parents=True, exist_ok=True)
        self.config_path = base / "fleet.yaml"
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.fleet = FleetConfig.model_validate(doc)
        local = self.fleet.providers.local
        assert local is not None
        self.state_dir = Path(local.state_dir)
        self.provider = LocalProvider(local.state_dir, keep_disks=local.keep_disks)
        self.provider.fleet = self.fleet.fleet
        store_root = base / "store"
        store_root.mkdir(parents=True, exist_ok=True)
        backend = FileBackend(store_root)
        self.runs = [
            RunState(r.name, run_seed(i), CheckpointStore(backend, r.name), store_root / r.name)
            for i, r in enumerate(self.fleet.runs)
        ]
        self.tick_no = 0
        self.faults: list[Fault] = []
        self.skipped: Counter[str] = Counter()
        self.waiting: list[tuple[str, int, float, float, int]] = []  # (kind, run, a, b, drawn)
        self.violations: list[Violation] = []
        self.recoveries = 0
        self.remedies: list[str] = []
        self.double_ticks = 0
        self.failed_ticks = 0
        self.tick_errors: set[str] = set()  # reported in the current episode
        self.kinds = tuple(k for k in FAULTS if k not in args.skip and k in args.only)
        self.pending: list[tuple[float, Callable[[], None]]] = []  # (when, undo)
        self.lock = threading.RLock()  # the poller springs outages and undoes them too
        self.fired: Counter[str] = Counter()
        self.last_killed_tick = -(10**9)
        self.gone: set[str] = set()  # instances whose session has ended
        self.records: dict[str, dict[str, Any]] = {}  # every instance ever seen, by id
        self._stop_poll = threading.Event()
        self._killers: list[threading.Thread] = []

    # -- bookkeeping -----------------------------------------------------------------------

    def poll_records(self) -> None:
        """Instance records vanish when the provider forgets a dead instance: keep a copy of
        each (its disk holds the trainer's metrics, its session the processes to account)."""
        with self.lock:
            present = set()
            for path in (self.state_dir / "instances").glob("*.json"):
                present.add(path.stem)
                if path.stem in self.records:
                    continue
                try:
                    self.records[path.stem] = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
            # The provider forgets an instance whose processes are gone.
            self.gone = set(self.records) - present

    def _poller(self) -> None:
        while not self._stop_poll.wait(0.1):
            self.poll_records()
            self._fire_armed()
            self.undo_due()

    def history(self, run: str) -> list[Fault]:
        return [f for f in self.faults if f.run in (run, "*")]

    def violate(self, invariant: str, rs: RunState | None, detail: str, once: bool = True) -> None:
        """Record a violation; with `once`, one per episode of the run's invariant."""
        if rs is not None:
            if once and invariant in rs.reported:
                return
            rs.reported.add(invariant)
        name = rs.name if rs is not None else "fleet"
        history = self.history(rs.name) if rs is not None else list(self.faults)
        v = Violation(invariant, name, self.tick_no, detail, history)
        self.violations.append(v)
        print(f"VIOLATION{v.line(self.args.seed)[1:]}", flush=True)

    def clear(self, invariant: str, rs: RunState) -> None:
        rs.reported.discard(invariant)

    def live(self, rs: RunState) -> list[dict[str, Any]]:
        out = []
        for inst in self.provider.list_instances(rs.name):
            rec = self.provider.record(inst.id) or self.records.get(inst.id)
            if rec is not None:
                out.append(rec)
        return out

    # -- faults ----------------------------------------------------------------------------

    def draw(self) -> tuple[bool, str, int, float, float, bool]:
        """The same six draws every tick, whatever happens: the schedule is the seed's."""
        r = self.rng
        fire = r.random() < self.args.fault_rate
        kind = r.choice(self.kinds)
        run_i = r.randrange(len(self.runs))
        a, b = r.random(), r.random()
        double = r.random() < self.args.double_rate
        return fire, kind, run_i, a, b, double

    def inject(self, kind: str, rs: RunState, a: float, b: float) -> str | None:
        """Apply one fault; its detail, or None when it had nothing to hit."""
        with self.lock:  # the poller may take the store away meanwhile
            if rs.unreadable_until is not None and kind not in PROCESS_FAULTS:
                return None
            return self._inject(kind, rs, a, b)

    def _inject(self, kind: str, rs: RunState, a: float, b: float) -> str | None:
        if kind in ("kill-pod", "stop-pod", "term-pod", "kill-supervisor"):
            return self._signal_pod(kind, rs, a, b)
        if kind in ("kill-trainer", "term-trainer"):
            return self._signal_trainer(kind, rs, a)
        if kind == "store-unreadable":
            return self._unreadable(rs, b)
        if kind in ("outage-at-restore", "outage-at-finish"):
            return self._arm(kind, rs, b)
        if kind == "flip-bytes":
            return self._flip(rs, a, b)
        if kind in ("pointer-delete", "ledger-delete"):
            key = rs.store.keys.latest if kind == "pointer-delete" else rs.store.keys.ledger
            path = rs.root.parent / key
            if not path.exists() or rs.unreadable_until:
                return None
            path.unlink()
            return f"deleted {key}"
        if kind in ("pointer-garbage", "ledger-garbage", "lease-garbage"):
            key = {
                "pointer-garbage": rs.store.keys.latest,
                "ledger-garbage": rs.store.keys.ledger,
                "lease-garbage": lease_module.lease_key(rs.name),
            }[kind]
            if rs.unreadable_until:
                return None
            junk = GARBAGE[int(a * len(GARBAGE))]
            path = rs.root.parent / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(junk)
            if kind == "pointer-garbage":
                rs.my_garbage = junk
            return f"{key} := {junk[:40]!r}{'...' if len(junk) > 40 else ''}"
        if kind == "tick-killed":
            self.last_killed_tick = self.tick_no
            return self._killed_tick(a)
        raise AssertionError(kind)

    def _victim(self, rs: RunState, a: float) -> dict[str, Any] | None:
        live = sorted(self.live(rs), key=lambda rec: str(rec["id"]))
        return live[int(a * len(live))] if live else None

    def _signal_pod(self, kind: str, rs: RunState, a: float, b: float) -> str | None:
        rec = self._victim(rs, a)
        if rec is None:
            return None
        inst, sid = str(rec["id"]), int(rec["sid"])
        if kind in ("kill-supervisor", "term-pod") and sid not in _session_processes(sid):
            return None  # the supervisor is already gone; its trainer lives on
        if kind == "kill-pod":
            n = self.provider.signal(inst, signal.SIGKILL)
            return f"SIGKILL {n} processes of {inst} g{rec['generation']}"
        if kind == "kill-supervisor":
            os.kill(sid, signal.SIGKILL)
            return f"SIGKILL supervisor {sid} of {inst} (its trainer lives on)"
        if kind == "term-pod":
            os.kill(sid, signal.SIGTERM)
            return f"SIGTERM supervisor of {inst} g{rec['generation']}"
        seconds = 1.0 + 9.0 * b
        self.provider.signal(inst, signal.SIGSTOP)
        self.pending.append(
            (time.monotonic() + seconds, lambda: self.provider.signal(inst, signal.SIGCONT))
        )
        return f"SIGSTOP {inst} g{rec['generation']} for {seconds:.1f}s"

    def _signal_trainer(self, kind: str, rs: RunState, a: float) -> str | None:
        rec = self._victim(rs, a)
        if rec is None:
            return None
        sid = int(rec["sid"])
        groups = set()
        for pid in _session_processes(sid):
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if pgid != sid:
                groups.add(pgid)
        if not groups:
            return None
        sig = signal.SIGKILL if kind == "kill-trainer" else signal.SIGTERM
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        return f"{sig.name} trainer group(s) {sorted(groups)} of {rec['id']}"

    def _unreadable(self, rs: RunState, b: float) -> str | None:
        with self.lock:
            if rs.unreadable_until or not rs.root.exists():
                return None
            seconds = 1.0 + 5.0 * b
            mode = rs.root.stat().st_mode & 0o7777
            rs.root.chmod(0)
            rs.unreadable_until = time.monotonic() + seconds

            def undo() -> None:
                rs.root.chmod(mode)
                rs.unreadable_until = None

            self.pending.append((rs.unreadable_until, undo))
        return f"chmod 000 {rs.root.name}/ for {seconds:.1f}s"

    def _arm(self, kind: str, rs: RunState, b: float) -> str | None:
        """An outage that waits for its moment: the next instance's start (its restore), or
        the trainer nearing the target (the final save and publish)."""
        with self.lock:
            if rs.armed is not None:
                return None
            known = {i for i, rec in self.records.items() if rec.get("run") == rs.name}
            rs.armed = (kind, b, known)
        moment = "the next instance starts" if kind == "outage-at-restore" else "the final save"
        return f"armed: the store goes away when {moment}"

    def _fire_armed(self) -> None:
        """From the poller (every 0.1 s): spring the armed outages whose moment came."""
        for rs in self.runs:
            with self.lock:
                if rs.armed is None or rs.unreadable_until is not None or rs.operating:
                    continue
                kind, b, known = rs.armed
                mine = {i: r for i, r in self.records.items() if r.get("run") == rs.name}
                if kind == "outage-at-restore":
                    due = bool(set(mine) - known)
                else:
                    due = any(
                        self._last_step(Path(str(r["disk"]))) >= self.args.target - 3
                        for i, r in mine.items()
                        if i not in self.gone
                    )
                if not due:
                    continue
                rs.armed = None
                detail = self._unreadable(rs, b)
            if detail is not None:
                self.fired[kind] += 1
                print(f"t{self.tick_no:<4} fired {kind:<17} {rs.name}: {detail}", flush=True)

    @staticmethod
    def _last_step(disk: Path) -> int:
        try:
            with open(disk / "metrics.jsonl", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 300))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return -1
        for line in reversed(tail):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
        return -1

    def _flip(self, rs: RunState, a: float, b: float) -> str | None:
        ckpts = rs.root / "checkpoints"
        if rs.unreadable_until or not ckpts.is_dir():
            return None
        # The pod's retention deletes steps meanwhile: walk what is there, tolerate losses.
        final = step_dirname(self.args.target)
        files = []
        for root, _, names in os.walk(ckpts):
            rel = Path(root).relative_to(ckpts).parts
            # The final step is left whole: nothing re-reads a finished run's checkpoint, so
            # its damage could only be found by the soak, not recovered from.
            if rel and rel[0] == final:
                continue
            for name in names:
                p = Path(root) / name
                with contextlib.suppress(OSError):
                    if not name.startswith(("MANIFEST", ".")) and p.stat().st_size:
                        files.append(p)
        files.sort()
        if not files:
            return None
        victim = files[int(a * len(files))]
        size = victim.stat().st_size
        at = int(b * size)
        mode = victim.stat().st_mode & 0o7777
        try:
            victim.chmod(mode | 0o200)
            with open(victim, "r+b") as f:
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0xFF]))
            victim.chmod(mode)
        except OSError:
            return None  # the pod's gc removed it in between
        step_dir = victim.relative_to(ckpts).parts[0]
        rs.damaged.add(step_dir)
        return f"flipped byte {at} of {victim.relative_to(rs.root)}"

    def _killed_tick(self, a: float) -> str:
        delay = 0.3 + 3.5 * a
        cmd = [sys.executable, "-m", "bench.soak", "--one-tick", str(self.config_path)]
        cmd += ["--lease-ttl", str(self.args.lease_ttl)]
        proc = subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def killer() -> None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        self._killers.append(t)
        return f"`respawn reconcile` in pid {proc.pid}, SIGKILL after {delay:.1f}s"

    def undo_due(self, everything: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            keep = []
            for when, undo in self.pending:
                if everything or when <= now:
                    with contextlib.suppress(OSError):
                        undo()
                else:
                    keep.append((when, undo))
            self.pending = keep

    # -- ticks -----------------------------------------------------------------------------

    def run_ticks(self, double: bool) -> list[RunReport] | None:
        """One tick, or two at once (a cron tick meeting a person's); every run's report from
        the tick that acted on it (the other only looked), None when every tick raised."""
        results: list[list[RunReport] | BaseException] = []
        lock = threading.Lock()

        def one() -> None:
            try:
                out: list[RunReport] | BaseException = tick(self.fleet)
            except BaseException as e:
                out = e
            with lock:
                results.append(out)

        threads = [threading.Thread(target=one) for _ in range(2 if double else 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.double_ticks += double
        reports: list[RunReport] | None = None
        for res in results:
            if isinstance(res, BaseException):
                for rs in self.runs:
                    rs.health, rs.reason = Health.UNKNOWN, f"tick raised {type(res).__name__}"
                    rs.skipped = None
                why = f"tick() raised {type(res).__name__}: {str(res)[:200]}"
                if why not in self.tick_errors:
                    self.violate("tick-completes", None, why)
                self.tick_errors.add(why)
                self.failed_ticks += 1
            elif reports is None:
                reports = res
            else:
                acted = {r.run for r in res if r.skipped is None}
                reports = [r for r in reports if r.run not in acted] + [
                    r for r in res if r.run in acted
                ]
        if reports is not None:
            self.tick_errors.clear()  # a new episode may report the same error again
        return reports

    # -- invariants ------------------------------------------------------------------------

    def check(self, reports: list[RunReport] | None) -> None:
        by_run = {r.run: r for r in reports or []}
        for rs in self.runs:
            report = by_run.get(rs.name)
            if report is not None:
                rs.health = report.plan.verdict.health
                rs.reason = report.plan.verdict.reason
                rs.skipped = report.skipped
            self._check_instances(rs)
            with self.lock:  # an outage the poller springs must not read as damage
                if rs.unreadable_until is None:
                    self._check_pointer(rs)
            self._check_stuck(rs)
            was_bad, rs.bad = rs.bad, rs.health in BAD
            if was_bad and rs.health in (Health.HEALTHY, Health.STARTING, Health.FINISHED):
                self.recoveries += 1

    def _check_instances(self, rs: RunState) -> None:
        n = len(self.live(rs))
        rs.dup_ticks = rs.dup_ticks + 1 if n > 1 else 0
        if rs.dup_ticks > self.args.settle_ticks:
            self.violate("one-instance", rs, f"{n} live instances for {rs.dup_ticks} ticks")
        elif rs.dup_ticks == 0:
            self.clear("one-instance", rs)

    def _ledger(self, rs: RunState) -> Ledger | None:
        try:
            return read_ledger(rs.store)
        except (StoreError, ValueError):
            return None

    def _check_pointer(self, rs: RunState) -> None:
        raw_path = rs.root.parent / rs.store.keys.latest
        try:
            raw = raw_path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError:
            return
        if raw is None:
            return
        if rs.my_garbage is not None and raw == rs.my_garbage:
            return  # still the soak's own garbage
        rs.my_garbage = None
        try:
            pointer = rs.store.read_pointer()
        except (StoreError, ValueError) as e:
            self.violate("pointer-verifies", rs, f"latest.json written by respawn: {e}")
            return
        if pointer is None:
            return
        self.clear("pointer-verifies", rs)
        parts = pointer.manifest.split("/")
        step_dir = parts[parts.index("checkpoints") + 1] if "checkpoints" in parts else ""
        if step_dir not in rs.damaged:
            mf = rs.root.parent / pointer.manifest
            try:
                mtime = mf.stat().st_mtime
            except OSError:
                mtime = -1.0
            cache_key = (pointer.manifest, mtime, len(rs.damaged))
            if cache_key not in rs.verified:
                rs.verified[cache_key] = rs.store.verify(pointer.manifest)
            why = rs.verified[cache_key]
            if why is not None:
                self.violate(
                    "pointer-verifies", rs, f"pointer names step {pointer.step}: {why[:200]}"
                )
        if rs.high_water is not None and pointer.step < rs.high_water:
            ledger = self._ledger(rs)
            rolled = ledger is not None and any(r.to_step == pointer.step for r in ledger.rollbacks)
            # Falling back past steps the soak corrupted is what a reader must do.
            try:
                steps = rs.store.manifest_refs()
                newer = [st for st in steps if pointer.step < st <= rs.high_water]
            except StoreError:
                newer = []
            past_damage = bool(newer) and all(step_dirname(st) in rs.damaged for st in newer)
            if not rolled and not past_damage:
                self.violate(
                    "never-backwards",
                    rs,
                    f"pointer moved back from step {rs.high_water} to {pointer.step} "
                    f"(g{pointer.generation}, {pointer.writer}) with no rollback in the ledger",
                    once=False,
                )
        rs.high_water = pointer.step

    def _check_stuck(self, rs: RunState) -> None:
        """`unknown`/`halted`, or no tick able to act on the run (its lease unusable): a
        killed tick's lease holds the run for up to a TTL, so that allowance is added."""
        done = rs.health in (Health.FINISHED, Health.STOPPED)
        locked = rs.skipped is not None and not done
        if rs.health not in STUCK and not locked:
            rs.stuck_ticks, rs.remedied_at = 0, None
            self.clear("not-stuck", rs)
            return
        ttl_ticks = int(self.args.lease_ttl / self.args.tick_seconds) + 1
        if locked and self.tick_no - self.last_killed_tick <= ttl_ticks:
            rs.stuck_ticks = 0  # each killed tick may hold the lease for a TTL, by design
            return
        if rs.unreadable_until is not None:
            # The soak holds the store away (a person would see it down and wait): these
            # ticks count neither before a remedy nor against one already applied.
            return
        rs.stuck_ticks += 1
        limit = self.args.stuck_ticks
        if rs.skipped is not None:  # a lease left by a cut-off tick's release: one TTL
            limit += ttl_ticks
        if rs.stuck_ticks <= limit:
            return
        remedy = REMEDY.search(rs.reason)
        if remedy is None:
            self.violate(
                "not-stuck",
                rs,
                f"{rs.health.value} for {rs.stuck_ticks} ticks, no remedy named: {rs.reason}"
                + (f" [no tick could act: {rs.skipped}]" if rs.skipped else ""),
            )
        elif rs.remedied_at is None:
            # A new count starts: the remedy must end the state within `limit` ticks.
            ran = self.operator(rs, remedy.group(1))
            if ran is not None:  # failed: a person tries again after as long again
                rs.remedied_at, rs.stuck_ticks = (self.tick_no if ran else None), 0
        else:
            self.violate(
                "not-stuck",
                rs,
                f"still {rs.health.value} {limit} ticks after a named remedy: {rs.reason}",
            )

    def operator(self, rs: RunState, command: str) -> bool | None:
        """What a person does with a named remedy: run it; whether it succeeded (None: not
        run, the store is down, as a person would see and wait for: the soak took it away)."""
        words = shlex.split(command)[1:]
        if "--run" not in words:
            words += ["--run", rs.name]
        words += ["-c", str(self.config_path)]
        with self.lock:  # the poller springs armed outages: checked and held at once
            if rs.unreadable_until is not None:
                return None
            rs.operating = True
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.soak", "--cli", *words],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            with self.lock:
                rs.operating = False
        out = (proc.stdout + proc.stderr).strip().splitlines()
        last = out[-1] if out else ""
        line = f"t{self.tick_no} {rs.name}: `{command}` -> exit {proc.returncode}: {last[:160]}"
        self.remedies.append(line)
        print(f"operator: {line}", flush=True)
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            self.violate("not-stuck", rs, f"the named remedy failed: {line}", once=False)
            return False  # a person would try again, and so does the soak
        return True

    # -- phases ----------------------------------------------------------------------------

    def soak(self) -> None:
        end = time.monotonic() + self.args.minutes * 60
        while time.monotonic() < end and self.tick_no < (self.args.ticks or sys.maxsize):
            started = time.monotonic()
            self.tick_no += 1
            self.undo_due()
            fire, kind, run_i, a, b, double = self.draw()
            # A fault with nothing to hit yet (pods still starting: a loaded machine) waits
            # for a later tick, so every kind the seed draws still bites.
            waiting, self.waiting = self.waiting, []
            for fault in waiting + ([(kind, run_i, a, b, self.tick_no)] if fire else []):
                self.fire(*fault)
            self.check(self.run_ticks(double))
            self.poll_records()
            time.sleep(max(0.0, self.args.tick_seconds - (time.monotonic() - started)))
        for kind, *_ in self.waiting:  # the faults are over: these never found a target
            self.skipped[kind] += 1
        self.waiting = []

    def fire(self, kind: str, run_i: int, a: float, b: float, drawn: int) -> None:
        """The drawn run first; one with nothing to hit (no live pod, no store yet) passes
        the fault on to the next run, in order; with nothing anywhere it waits a tick."""
        detail = None
        for k in range(len(self.runs)):
            rs = self.runs[(run_i + k) % len(self.runs)]
            if (detail := self.inject(kind, rs, a, b)) is not None:
                break
        if detail is None:
            if self.tick_no - drawn < self.args.fault_wait:
                self.waiting.append((kind, run_i, a, b, drawn))
            else:
                self.skipped[kind] += 1
            return
        target = "*" if kind == "tick-killed" else rs.name
        self.faults.append(Fault(self.tick_no, kind, target, detail))
        # A fault after a remedy starts a new episode: a person applies the remedy again
        # (the soak saw a ledger deleted twice, 2 ticks apart).
        if target == rs.name and rs.remedied_at is not None:
            rs.remedied_at, rs.stuck_ticks = None, 0
        late = f" (drawn t{drawn})" if drawn != self.tick_no else ""
        print(f"t{self.tick_no:<4} fault {kind:<17} {rs.name}: {detail}{late}", flush=True)

    def settle(self) -> None:
        """No more faults: the fleet must finish on its own."""
        self.undo_due(everything=True)
        for t in self._killers:
            t.join()
        end = time.monotonic() + self.args.settle_minutes * 60
        while time.monotonic() < end:
            started = time.monotonic()
            self.tick_no += 1
            self.check(self.run_ticks(False))
            self.poll_records()
            done = all(rs.health == Health.FINISHED and not self.live(rs) for rs in self.runs)
            if done:
                return
            time.sleep(max(0.0, self.args.tick_seconds - (time.monotonic() - started)))

    def final(self) -> None:
        with self.lock:
            for rs in self.runs:
                rs.armed = None
        self.undo_due(everything=True)
        target = self.args.target
        for rs in self.runs:
            problems = []
            if rs.health != Health.FINISHED:
                problems.append(f"ends {rs.health.value if rs.health else '?'}: {rs.reason}")
            try:
                pointer = rs.store.read_pointer()
            except (StoreError, ValueError) as e:
                pointer = None
                problems.append(f"pointer unreadable: {e}")
            if pointer is None or pointer.step < target:
                problems.append(f"pointer at {pointer.step if pointer else None} < {target}")
            elif (why := rs.store.verify(pointer.manifest)) is not None:
                problems.append(f"final pointer does not verify: {why[:160]}")
            reference = trajectory(rs.seed, target)
            logged, wrong = set(), []
            for rec in self.records.values():
                if rec.get("run") != rs.name:
                    continue
                for row in read_metrics(Path(str(rec["disk"])) / "metrics.jsonl"):
                    step = int(row["step"])
                    logged.add(step)
                    if not 1 <= step <= target or row["loss"] != reference[step - 1]:
                        wrong.append((rec["generation"], step))
            if wrong:
                problems.append(f"losses differ from the uninterrupted run at {wrong[:5]}")
            if target not in logged:
                problems.append(f"no trainer logged step {target}")
            if problems:
                self.violate("reaches-target", rs, "; ".join(problems))
        # An unfinished run's live instance is not a leak (reaches-target has reported it).
        unfinished = {rs.name for rs in self.runs if rs.health != Health.FINISHED}
        allowed = set()
        for inst in self.provider.list_all():
            rec = self.provider.record(inst.id)
            if rec is not None and inst.run in unfinished:
                allowed.add(int(rec["sid"]))
        leaked = self.leaked(allowed)
        if leaked:
            self.violate("no-leak", None, f"processes left: {leaked[:10]}")

    def leaked(self, allowed: set[int] | None = None) -> list[int]:
        """Processes of any pod (in a recorded pod's session, or working in an instance disk:
        a pod whose record was never written) outside the sessions in `allowed`."""
        allowed = allowed or set()
        disks = str(self.state_dir / "disks") + "/"
        out = set()
        for sid in {int(r["sid"]) for r in self.records.values()} - allowed:
            out.update(_session_processes(sid))
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry.name}/cwd") + "/"
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            live = fields[0] not in ("Z", "X")
            if cwd.startswith(disks) and live and int(fields[3]) not in allowed:
                out.add(int(entry.name))
        return sorted(out)

    def cleanup(self) -> None:
        self._stop_poll.set()
        for rs in self.runs:
            rs.armed = None
        self.undo_due(everything=True)
        for inst in self.provider.list_all():
            self.provider.signal(inst.id, signal.SIGCONT)
            self.provider.signal(inst.id, signal.SIGKILL)
        for pid in self.leaked():
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def main(self) -> int:
        t0 = time.monotonic()
        poller = threading.Thread(target=self._poller, daemon=True)
        poller.start()
        try:
            self.soak()
            fault_ticks = self.tick_no
            self.settle()
            self.final()
        finally:
            self.cleanup()
        wall = time.monotonic() - t0
        self.totals(fault_ticks, wall)
        return 1 if self.violations else 0

    def totals(self, fault_ticks: int, wall: float) -> None:
        a = self.args
        kinds = Counter(f.kind for f in self.faults)
        launches = Counter(str(r.get("run")) for r in self.records.values())
        by_inv = Counter(v.invariant for v in self.violations)
        print(f"\nsoak seed {a.seed}: {a.runs} runs to step {a.target}, {a.minutes} min of faults")
        print(
            f"ticks                : {self.tick_no} ({fault_ticks} with faults drawn, "
            f"{self.double_ticks} double, {self.failed_ticks} raised)"
        )
        print(
            f"faults               : {len(self.faults)} "
            f"({sum(self.skipped.values())} drawn with nothing to hit, "
            f"{self.args.fault_wait} ticks waited)"
        )
        for kind in FAULTS:
            fired = f" (fired {self.fired[kind]})" if kind.startswith("outage-at") else ""
            print(f"  {kind:<19}: {kinds[kind]}{fired}")
        print(f"recoveries           : {self.recoveries} (bad -> healthy/finished)")
        print(f"instances per run    : {' '.join(str(launches[rs.name]) for rs in self.runs)}")
        print(f"operator remedies    : {len(self.remedies)}")
        for line in self.remedies:
            print(f"  {line}")
        print(f"violations           : {len(self.violations)}")
        for inv in INVARIANTS:
            print(f"  {inv:<19}: {by_inv[inv]}")
        for v in self.violations:
            print(v.line(a.seed))
        print(f"wall time            : {wall:.1f} s")


def one_tick(config: Path, lease_ttl: float) -> int:
    """`respawn reconcile -c CONFIG`, with the soak's lease TTL (the killed-tick fault)."""
    from respawn.controller.cli import main as cli_main

    set_lease_ttl(lease_ttl)
    return cli_main(["reconcile", "-c", str(config)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--minutes", type=float, default=3.0, help="how long faults are injected")
    p.add_argument("--ticks", type=int, help="end the faults after this many ticks")
    p.add_argument("--settle-minutes", type=float, default=None, help="then, to finish")
    p.add_argument("--target", type=int, default=None, help="each run's target step")
    p.add_argument("--step-seconds", type=float, default=0.1)
    p.add_argument("--tick-seconds", type=float, default=1.0)
    p.add_argument("--fault-rate", type=float, default=0.35, help="chance of a fault per tick")
    p.add_argument("--double-rate", type=float, default=0.15, help="chance of two ticks at once")
    p.add_argument("--settle-ticks", type=int, default=4, help="a launch race's allowance")
    p.add_argument("--stuck-ticks", type=int, default=8)
    p.add_argument(
        "--fault-wait", type=int, default=8, help="ticks a fault with nothing to hit waits"
    )
    p.add_argument("--lease-ttl", type=float, default=20.0, help="seconds (the product: 300)")
    p.add_argument(
        "--skip",
        type=lambda s: tuple(k for k in s.split(",") if k),
        default=(),
        help=f"fault kinds never drawn, comma-separated (of {', '.join(FAULTS)})",
    )
    p.add_argument(
        "--only",
        type=lambda s: tuple(k for k in s.split(",") if k),
        default=FAULTS,
        help="the fault kinds drawn (default: all), comma-separated",
    )
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    p.add_argument("--one-tick", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if unknown := (set(args.skip) | set(args.only)) - set(FAULTS):
        p.error(f"--skip/--only: no fault kind {', '.join(sorted(unknown))}")
    if args.cli is not None:  # the operator's remedy, with the soak's lease TTL
        from respawn.controller.cli import main as cli_main

        set_lease_ttl(args.lease_ttl)
        return cli_main(args.cli)
    if args.one_tick is not None:
        return one_tick(args.one_tick, args.lease_ttl)
    drop_dac_and_reexec()
    if args.target is None:
        # Long enough that the runs are still training for most of the faults.
        args.target = max(40, int(args.minutes * 60 * 0.6 / args.step_seconds) // 5 * 5)
    if args.settle_minutes is None:
        args.settle_minutes = max(1.0, args.minutes)
    set_lease_ttl(args.lease_ttl)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="respawn-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    # The controller's warnings and alerts go to a file: the soak prints faults and findings.
    logging.basicConfig(
        filename=base / "controller.log",
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(name)s %(message)s",
    )
    print(f"soak in {base}: seed {args.seed}, {args.runs} runs, target step {args.target}")
    try:
        return Soak(args, base).main()
    finally:
        if args.workdir is None:
            _chmod_back(base)
            shutil.rmtree(base, ignore_errors=True)


def _chmod_back(base: Path) -> None:
    for root, dirs, _ in os.walk(base):
        for d in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / d).chmod(0o755)


if __name__ == "__main__":
    sys.exit(main())
