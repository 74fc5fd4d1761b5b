"""`respawn demo`: the whole recovery loop on this machine, with a failure injected.

A file:// store, the local provider and the toy trainer (examples/local.yaml). The controller
launches the run; once a checkpoint is published and later steps are not, the instance is
killed with SIGKILL (a spot reclaim). Controller ticks, a second apart, see `dead`, launch
generation 2, which resumes from the last published step, and finally see `finished` and
clean up. Exit 0 only if the resume step is right, the loss trajectory equals an
uninterrupted run's, and no process of the run is left.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from respawn.contract.pod import render_command
from respawn.controller.config import FleetConfig
from respawn.controller.ledger import read_ledger
from respawn.controller.model import Health, Provision, Rollback, Terminate
from respawn.controller.reconcile import RunReport, tick
from respawn.controller.stores import open_run_store
from respawn.provisioning.local import LocalProvider
from respawn.store.store import StoreError

TICK_SECONDS = 0.5
DEADLINE_SECONDS = 55.0


@dataclass
class Timeline:
    start: float = field(default_factory=time.monotonic)
    header_printed: bool = False

    def __call__(
        self, event: str, step: int | None = None, gen: int | None = None, detail: str = ""
    ) -> None:
        if not self.header_printed:
            print(f"{'time':>7}  {'event':<24} {'step':>5} {'gen':>4}  detail")
            self.header_printed = True
        t = time.monotonic() - self.start
        s = "-" if step is None else str(step)
        g = "-" if gen is None else f"g{gen}"
        print(f"{t:6.2f}s  {event:<24} {s:>5} {g:>4}  {detail}", flush=True)


def demo_doc(base: Path) -> dict[str, Any]:
    """examples/local.yaml with its store and instances moved under `base` (the demo's fleet,
    and the one bench/soak.py copies for each of its runs)."""
    text = resources.files("respawn.examples").joinpath("local.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    doc["store"]["url"] = f"file://{base / 'store'}"
    doc["providers"]["local"]["state_dir"] = str(base / "instances")
    doc["providers"]["local"]["keep_disks"] = True  # the demo compares the trainers' metrics
    return doc


def demo_config(base: Path) -> FleetConfig:
    return FleetConfig.model_validate(demo_doc(base))


def read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by SIGKILL
    return out


class Demo:
    def __init__(self, base: Path, fleet: FleetConfig | None = None) -> None:
        self.base = base
        self.fleet = fleet or demo_config(base)
        self.run = self.fleet.runs[0]
        self.store = open_run_store(self.fleet.store, self.run.name)
        assert self.fleet.providers.local is not None
        self.provider = LocalProvider(self.fleet.providers.local.state_dir)
        self.provider.fleet = self.fleet.fleet  # sees the controller's instances
        self.log = Timeline()
        self.last_health: Health | None = None
        self.last_pointer: int | None = None
        self.published: set[tuple[int, int | None]] = set()  # (step, generation) logged
        self.disks: dict[int, Path] = {}

    def tick(self) -> RunReport:
        report = tick(self.fleet)[0]
        v = report.plan.verdict
        gen = report.observation.ledger.generation or None
        if v.health != self.last_health:
            self.log(f"controller: {v.health.value}", v.step, gen, v.reason)
            self.last_health = v.health
        for res in report.results:
            a = res.action
            if isinstance(a, Provision):
                self.log(
                    "launch" if res.ok else "launch FAILED", a.resume_step, a.generation, res.detail
                )
                if res.ok:
                    inst_id = res.detail.split()[0].split(":", 1)[1]
                    rec = self.provider.record(inst_id)
                    if rec:
                        self.disks[a.generation] = Path(str(rec["disk"]))
            elif isinstance(a, Terminate):
                self.log("terminate", None, None, f"{a.name}: {a.reason}")
            elif isinstance(a, Rollback):
                event = "roll pointer back" if res.ok else "rollback FAILED"
                self.log(event, a.to_step, a.generation, res.detail)
        return report

    def watch_pointer(self) -> int | None:
        """Log every step published since the last look, from the store's listing: the
        pointer alone skips a step published between two looks."""
        pointer = self.store.read_pointer()
        for step, refs in sorted(self.store.manifest_refs().items()):
            for ref in reversed(refs):  # oldest generation first
                if (step, ref.generation) in self.published:
                    continue
                self.published.add((step, ref.generation))
                try:
                    manifest = self.store.read_manifest_key(ref.key)
                except StoreError:  # removed by retention since the listing: still published
                    manifest = None
                writer = (manifest.writer if manifest is not None else None) or ""
                self.log("checkpoint published", step, ref.generation, writer)
        if pointer is not None:
            self.last_pointer = pointer.step
        return pointer.step if pointer else None

    def start_reference(self) -> subprocess.Popen[bytes]:
        ref = self.base / "reference"
        ref.mkdir(parents=True, exist_ok=True)
        cmd = render_command(self.run.pod, self.run.name, 0, ref, None, sys.executable)
        return subprocess.Popen(
            shlex.split(cmd), cwd=ref, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def live_instances(self) -> list[str]:
        return [i.id for i in self.provider.list_instances(self.run.name)]

    def cleanup(self) -> None:
        for inst_id in self.live_instances():
            self.provider.terminate(inst_id)

    def play(self, reference: subprocess.Popen[bytes]) -> int:
        return _scenario(self, reference)


class _HeldLog(logging.Handler):
    """Keeps log records while the demo prints its table; `show` writes them to stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def show(self) -> None:
        if self.lines:
            sys.stdout.flush()
            print(f"\ncontroller log ({len(self.lines)} lines):", file=sys.stderr)
            print("\n".join(f"  {line}" for line in self.lines), file=sys.stderr, flush=True)


def run_demo(workdir: Path | None = None, keep: bool = False, scenario: str = "reclaim") -> int:
    # Absolute: the store URL must be (file:///…), and the pods run in their own directories.
    base = Path(workdir).resolve() if workdir else Path(tempfile.mkdtemp(prefix="respawn-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"respawn demo ({scenario}) in {base}\n")
    config: Path | None = None
    if scenario == "degenerate":
        from respawn.examples.demo_degenerate import DegenerateDemo

        demo: Demo = DegenerateDemo(base)
    else:
        demo = Demo(base)
        # Kept with the store, so the other commands can look at what the demo did.
        config = base / "fleet.yaml"
        config.write_text(yaml.safe_dump(demo_doc(base), sort_keys=False))
    reference = demo.start_reference()
    # The controller's log lines would cut into the table: held back, shown after it.
    held = _HeldLog()
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers = [held]
    try:
        return demo.play(reference)
    finally:
        root.handlers = handlers
        held.show()
        demo.cleanup()
        if reference.poll() is None:
            reference.kill()
        reference.wait()
        if workdir is None and not keep:
            shutil.rmtree(base, ignore_errors=True)
            print(f"\nremoved {base} (`respawn demo --keep` keeps it to look around)")
        else:
            print(f"\nkept {base} (store, instance disks and logs)")
            if config is not None:
                print(f"look around: respawn history -c {config} --run {demo.run.name}")
                print(f"             respawn logs -c {config} --run {demo.run.name}")
                print(f"             respawn ckpt ls -c {config} --run {demo.run.name}")


def _scenario(demo: Demo, reference: subprocess.Popen[bytes]) -> int:
    run, log = demo.run, demo.log
    target = run.target_step
    assert target is not None
    deadline = time.monotonic() + DEADLINE_SECONDS

    # 1. From nothing: the controller launches generation 1.
    demo.tick()
    if 1 not in demo.disks:
        print("demo: the controller did not launch generation 1", file=sys.stderr)
        return 1

    # 2. Wait for a published checkpoint with later, unpublished steps behind it.
    killed_at_step = None
    last_tick = time.monotonic()
    while time.monotonic() < deadline:
        published = demo.watch_pointer()
        metrics = read_metrics(demo.disks[1] / "metrics.jsonl")
        trained = int(metrics[-1]["step"]) if metrics else 0
        if published is not None and trained >= published + 2:
            killed_at_step = trained
            break
        if time.monotonic() - last_tick >= TICK_SECONDS * 2:
            demo.tick()
            last_tick = time.monotonic()
        time.sleep(0.05)
    if killed_at_step is None:
        print("demo: generation 1 never published a checkpoint", file=sys.stderr)
        return 1

    # 3. Spot reclaim: SIGKILL every process of the instance, no chance to checkpoint.
    (victim,) = demo.live_instances()
    demo.provider.signal(victim, signal.SIGKILL)
    last_published = demo.watch_pointer()
    log(
        "SIGKILL instance",
        killed_at_step,
        1,
        f"steps {last_published + 1 if last_published is not None else 0}..{killed_at_step} "
        "were not published",
    )
    while demo.live_instances():
        time.sleep(0.02)

    # 4. Controller ticks until the run is finished and cleaned up.
    finished = False
    while time.monotonic() < deadline:
        demo.watch_pointer()
        report = demo.tick()
        if report.plan.verdict.health == Health.FINISHED and not demo.live_instances():
            finished = True
            break
        time.sleep(TICK_SECONDS)
    reference.wait(timeout=max(1.0, deadline - time.monotonic()))
    return _verify(demo, finished, last_published, target)


def _verify(demo: Demo, finished: bool, last_published: int | None, target: int) -> int:
    ledger = read_ledger(demo.store)
    pointer = demo.store.read_pointer()
    ref_losses = {
        int(m["step"]): m["loss"] for m in read_metrics(demo.base / "reference" / "metrics.jsonl")
    }
    g2 = read_metrics(demo.disks[2] / "metrics.jsonl") if 2 in demo.disks else []
    resumed_from = int(g2[0]["step"]) - 1 if g2 else None
    mismatches = [
        (gen, int(m["step"]))
        for gen, disk in demo.disks.items()
        for m in read_metrics(disk / "metrics.jsonl")
        if ref_losses.get(int(m["step"])) != m["loss"]
    ]
    launch2 = ledger.launch_of(2)
    checks = [
        ("the run finished and the controller saw it", finished),
        (
            f"checkpoint pointer reached the target step {target}",
            pointer is not None and pointer.step == target,
        ),
        (
            f"generation 2 was launched to resume from step {last_published}",
            launch2 is not None and launch2.resume_step == last_published,
        ),
        (
            f"generation 2 resumed at the last published step ({resumed_from})",
            resumed_from is not None and resumed_from == last_published,
        ),
        (
            f"loss trajectory equals an uninterrupted run's ({len(ref_losses)} steps)",
            len(ref_losses) == target and not mismatches,
        ),
        ("no process of the run is left", not demo.live_instances()),
        ("exactly two launches", ledger.generation == 2),
    ]
    print()
    for text, ok in checks:
        print(f"  {'✓' if ok else '✗'} {text}")
    if mismatches:
        print(f"    loss differs at (generation, step): {mismatches[:5]}")
    ok = all(ok for _, ok in checks)
    print("\ndemo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1
