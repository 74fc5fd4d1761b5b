"""`respawn` command line. Heavy modules are imported inside each command so `--help` is fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from respawn.controller.config import FleetConfig, RunConfig
    from respawn.controller.model import RunReport
    from respawn.provisioning.base import Provider

from respawn.controller.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

#: The secrets of the loaded config, masked in whatever this command prints (`_load`).
_redact: Callable[[str], str] = str
#: The fleet config when a command is given no -c (the remedies reports name omit it).
CONFIG_ENV = "RESPAWN_CONFIG"


def _load(args: argparse.Namespace) -> FleetConfig:
    """The fleet config; from here on every log line and every printed text is redacted of
    the secrets it names (`args.redact` for the reports)."""
    import os

    from respawn.controller.config import load_config
    from respawn.controller.redact import Redactor, install_log_redaction

    global _redact
    if args.config is None:
        raise UsageError(f"pass the fleet config: -c FLEET.yaml (or set {CONFIG_ENV})")
    fleet = load_config(args.config)
    args.redact = _redact = Redactor.from_fleet(fleet, os.environ)
    install_log_redaction(args.redact)
    return fleet


def _say(text: str, err: bool = False) -> None:
    """Print text that may quote a provider or a pod: redacted, no escape sequences."""
    from respawn.controller.redact import one_line

    lines = [one_line(line, 2000) for line in _redact(text).splitlines()]
    print("\n".join(lines), file=sys.stderr if err else sys.stdout)


def _per_provider(
    fleet: FleetConfig,
    run: RunConfig,
    work: Callable[[str, Provider], None],
) -> bool:
    """Run `work` for each of the run's providers; report failures; True if all succeeded."""
    from respawn.controller.providers import open_providers

    ok = True
    for name, provider in open_providers(fleet, set(run.providers)).items():
        try:
            if isinstance(provider, Exception):
                raise provider
            work(name, provider)
        except Exception as e:  # one provider down must not hide the others' results
            ok = False
            msg = str(e)
            # Provider errors already name their provider ("vast: ..."): never "vast: vast:".
            _say(msg if msg.startswith(f"{name}:") else f"{name}: {msg}", err=True)
    return ok


def cmd_reconcile(args: argparse.Namespace) -> int:
    import os

    from respawn.controller.reconcile import Mode, tick
    from respawn.controller.report import (
        annotation_lines,
        dumps,
        exit_code,
        to_text,
        write_step_summary,
    )

    fleet = _load(args)
    reports = tick(fleet, only=args.run, mode=Mode.DRY_RUN if args.dry_run else Mode.ACT)
    print(dumps(reports, args.redact) if args.json else to_text(reports, args.redact))
    # Workflow commands are read from stdout; --json keeps stdout one JSON document.
    in_actions = os.environ.get("GITHUB_ACTIONS") == "true"
    if fleet.notify.github_annotations and in_actions and not args.json:
        from respawn.controller.workflow_output import workflow_command

        for line in annotation_lines(reports, args.redact):
            workflow_command(line)
    write_step_summary(reports, args.redact)
    _draw_timelines(reports, os.environ.get(ENV_PLOT_DIR))
    return exit_code(reports)


#: Set by the tick workflow: each run's timeline is drawn here and uploaded as an artifact.
ENV_PLOT_DIR = "RESPAWN_PLOT_DIR"


def _draw_timelines(reports: list[RunReport], where: str | None) -> None:
    """The picture of each run (`respawn history --plot`), from the ledger this tick wrote;
    a failure to draw is a warning, never the tick's failure."""
    if not where:
        return
    from respawn.controller.history import history
    from respawn.controller.plot import write_plot

    Path(where).mkdir(parents=True, exist_ok=True)
    for r in reports:
        if r.now is None or not r.plan.ledger.launches:
            continue
        try:
            write_plot(history(r.plan.ledger, r.now), r.now, Path(where) / f"{r.run}.svg")
        except Exception as e:  # a picture is a nicety
            logging.getLogger("respawn.controller").warning("%s: no timeline: %s", r.run, e)


def _preflight(fleet: FleetConfig) -> None:
    import os

    from respawn.controller.preflight import check_env

    pre = check_env(fleet, os.environ)
    if pre.errors or pre.warnings:
        print(pre.message(), file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    from respawn.controller.reconcile import Mode, tick
    from respawn.controller.report import dumps, exit_code, to_text

    fleet = _load(args)
    _preflight(fleet)
    reports = tick(fleet, only=args.run, mode=Mode.OBSERVE)
    print(dumps(reports, args.redact) if args.json else to_text(reports, args.redact))
    return exit_code(reports)


def cmd_offers(args: argparse.Namespace) -> int:
    from respawn.controller.preview import (
        MARKET_PROVIDERS,
        OFFER_HEADER,
        gather_offers,
        offer_line,
        open_market_providers,
    )
    from respawn.provisioning.base import Resources

    global _redact
    if args.config is not None:
        if not args.run:
            raise UsageError("offers -c FLEET needs --run NAME (whose resources to match)")
        from respawn.controller.providers import open_providers

        fleet = _load(args)  # sets _redact from the secrets the fleet names
        run = fleet.run(args.run)
        res, names = run.resources, list(run.providers)
        providers = open_providers(fleet, set(names))
    else:
        try:
            res = Resources(
                gpus=tuple(args.gpu or ()),
                gpu_count=args.count,
                min_vram_gb=args.min_vram,
                disk_gb=args.disk,
                max_price_per_hour=args.max_price,
                market=args.market,
            )
        except ValueError as e:
            raise UsageError(f"offers: {e}") from None
        names = list(args.provider or MARKET_PROVIDERS)
        from respawn.controller.redact import Redactor

        # No config names the secrets: mask the clouds' usual key variables.
        _redact = Redactor(
            os.environ[v] for v in ("VAST_API_KEY", "RUNPOD_API_KEY") if os.environ.get(v)
        )
        urls = dict(u.split("=", 1) for u in args.api_url or () if "=" in u)
        if len(urls) != len(args.api_url or ()):
            raise UsageError("offers: --api-url takes NAME=URL (e.g. vast=https://...)")
        providers = open_market_providers(names, os.environ, urls)
    offers, errors = gather_offers(providers, res)
    for name in names:
        if name in errors:
            _say(f"skipped {errors[name]}", err=True)
    if args.json:
        # The clouds' own words, as they answered: a field may quote the caller's key.
        print(_redact(json.dumps([o.model_dump(mode="json") for o in offers], indent=2)))
    else:
        from respawn.provisioning.offers import matching_names

        for line in matching_names(res, names):
            print(line)
        print(OFFER_HEADER)
        for o in offers:
            print(offer_line(o, _redact))  # redacted before each column is cut
        if not offers:
            from respawn.controller.providers import MissingKeyError

            keyless = all(isinstance(providers.get(n), MissingKeyError) for n in names)
            if keyless:  # nothing was asked: say so, not that the clouds failed
                print("no offer: no cloud key is set (the variables are named above)")
            else:
                every = " (every provider failed)" if len(errors) == len(names) else ""
                print("no offer fits" + every)
    return EXIT_FAILED if errors and len(errors) == len(names) else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from respawn.controller.preview import preview_launch, preview_lines
    from respawn.controller.providers import open_providers
    from respawn.controller.reconcile import Mode, tick

    fleet = _load(args)
    reports = tick(fleet, only=args.run, mode=Mode.DRY_RUN)
    runs = {r.name: r for r in fleet.runs}
    wanted = {p for r in reports for p in runs[r.run].providers}
    providers = open_providers(fleet, wanted)
    previews = [preview_launch(runs[r.run], r, providers) for r in reports]
    if args.json:
        doc = [
            {
                "run": r.run,
                "health": r.plan.verdict.health.value,
                "reason": r.plan.verdict.reason,
                "launch": None if pv is None else pv.model_dump(mode="json"),
            }
            for r, pv in zip(reports, previews, strict=True)
        ]
        print(args.redact(json.dumps({"runs": doc}, indent=2)))
    else:
        for line in preview_lines(previews, reports, args.redact):
            print(line)
    return EXIT_OK


def _record_halt(
    fleet: FleetConfig,
    run_name: str,
    halted: bool,
    reason: str,
    stopped_at: datetime | None = None,
) -> str | None:
    """Write the run's halt order. Returns None, or why it could not be written."""
    from respawn.controller.ledger import write_halt
    from respawn.controller.model import HaltOrder
    from respawn.controller.stores import open_run_store
    from respawn.store.schema import utcnow

    try:
        store = open_run_store(fleet.store, run_name)
        order = HaltOrder(halted=halted, reason=reason, at=utcnow(), stopped_at=stopped_at)
        write_halt(store, order)
    except Exception as e:  # the store is down or the key rejected: say so, no traceback
        return f"{type(e).__name__}: {e}"
    return None


def _destroy_all(fleet: FleetConfig, run: RunConfig) -> tuple[int, bool]:
    """Destroy every instance of the run on each of its providers (not only the ledger's
    generation). Returns how many were destroyed and whether every provider answered."""
    destroyed = 0

    def destroy(name: str, provider: Provider) -> None:
        nonlocal destroyed
        for inst in provider.list_instances(run.name):
            if not inst.billing:
                continue
            provider.terminate(inst.id)
            destroyed += 1
            _say(f"terminated {name}:{inst.id} {inst.name}")

    ok = _per_provider(fleet, run, destroy)
    return destroyed, ok


def cmd_terminate(args: argparse.Namespace) -> int:
    from respawn.controller.report import when
    from respawn.store.schema import utcnow

    fleet = _load(args)
    run = fleet.run(args.run)
    # Destroy first: a store that cannot be written (or a rejected key) never keeps the kill
    # switch from killing. Then record the halt, so that no tick launches again, and sweep
    # once more for a launch that raced this command.
    _, destroyed_all = _destroy_all(fleet, run)
    halt_error = _record_halt(fleet, run.name, True, f"`respawn terminate` at {when(utcnow())}")
    if halt_error is None:
        _, swept = _destroy_all(fleet, run)
        destroyed_all = destroyed_all and swept
    failed = []
    if not destroyed_all:
        failed.append("destroying instances failed on a provider (above): run this again")
    if halt_error is not None:
        failed.append(
            f"the halt could not be recorded ({halt_error}): the next tick may launch again; "
            "fix the store and run this again"
        )
    for line in failed:
        _say(f"respawn terminate: FAILED: {line}", err=True)
    if halt_error is None:
        undo = f"respawn resume -c {args.config} --run {run.name}"
        print(f"run {run.name} halted; `{undo}` undoes it")
    return EXIT_FAILED if failed else EXIT_OK


def _published_host_keys(fleet: FleetConfig, run_name: str) -> dict[int, tuple[str, ...]]:
    """generation → the SSH host keys its pod published in its heartbeat."""
    from respawn.controller.stores import open_run_store
    from respawn.store.store import StoreError

    try:
        hb = open_run_store(fleet.store, run_name, read_only=True).read_heartbeat()
    except StoreError as e:
        print(f"heartbeat unreadable ({e}): no SSH host key to trust", file=sys.stderr)
        return {}
    return {hb.generation: hb.ssh_host_keys} if hb is not None else {}


def cmd_diagnose(args: argparse.Namespace) -> int:
    fleet = _load(args)
    run = fleet.run(args.run)

    host_keys = _published_host_keys(fleet, run.name)
    listed = 0

    def show(name: str, provider: Provider) -> None:
        nonlocal listed
        for inst in provider.list_instances(run.name):
            listed += 1
            _say(f"== {name}:{inst.id} {inst.name} ({inst.state.value})")
            diagnose = getattr(provider, "diagnose", None)
            if diagnose is None or not inst.live:
                print("   (no shell access)")
                continue
            for section, text in diagnose(inst.id, host_keys.get(inst.generation, ())).items():
                print(f"-- {section}")
                _say(text.rstrip())  # the pod's own output: anything may be in it

    ok = _per_provider(fleet, run, show)
    if ok and not listed:
        print(_no_instance(fleet, run.name, args.config))
    return EXIT_OK if ok else EXIT_FAILED


def _no_instance(fleet: FleetConfig, run_name: str, config: str | Path) -> str:
    """What `diagnose` says when there is nothing to look into: why, and where to look."""
    from respawn.controller.ledger import read_halt, read_ledger
    from respawn.controller.redact import one_line
    from respawn.controller.stores import open_run_store

    def quoted(text: str) -> str:  # may quote a pod or the store: redacted, one inert line
        return one_line(_redact(text), 2000)

    lines = [f"run {run_name}: no instance on {', '.join(fleet.run(run_name).providers)}"]
    try:
        store = open_run_store(fleet.store, run_name, read_only=True)
        ledger, order = read_ledger(store), read_halt(store)
        if order is not None and order.halted:
            lines.append(f"  stopped by hand: {quoted(order.reason)}")
        if ledger.halted:
            lines.append(f"  halted: {quoted(ledger.halted)}")
        if ledger.finished_at is not None:
            lines.append("  finished: it reached its target_step")
        if not ledger.launches:
            lines.append("  never launched")
    except Exception as e:  # the store is down or a document unreadable: say so, go on
        lines.append(f"  its ledger cannot be read: {quoted(f'{type(e).__name__}: {e}')}")
    c = quoted(f"-c {config} --run {run_name}")
    lines += [
        "look at:",
        f"  respawn logs {c}        the trainer's last output (any generation)",
        f"  respawn history {c}     every generation and why it ended",
        f"  respawn status -c {quoted(str(config))}   health, step and the halt reason",
    ]
    return "\n".join(lines)


def _stopped_by_hand(fleet: FleetConfig, run_name: str) -> datetime | None:
    """When the person's halt order in force was given (None when there is none, or it cannot
    be read: the resume rewrites an unreadable one anyway)."""
    from respawn.controller.ledger import read_halt
    from respawn.controller.stores import open_run_store

    try:
        order = read_halt(open_run_store(fleet.store, run_name, read_only=True))
    except Exception:  # unreadable or the store down: only wording and history depend on it
        return None
    return order.at if order is not None and order.halted else None


def cmd_resume(args: argparse.Namespace) -> int:
    from respawn.controller.classify import extended
    from respawn.controller.ledger import read_ledger
    from respawn.controller.model import Observation
    from respawn.controller.report import when
    from respawn.controller.stores import open_run_store
    from respawn.store.schema import utcnow
    from respawn.store.store import StoreError

    fleet = _load(args)
    run = fleet.run(args.run)
    stopped_at = _stopped_by_hand(fleet, run.name)
    error = _record_halt(
        fleet, run.name, False, f"`respawn resume` at {when(utcnow())}", stopped_at
    )
    if error is not None:
        _say(f"respawn resume: FAILED: could not record the resume ({error})", err=True)
        return EXIT_FAILED
    try:
        store = open_run_store(fleet.store, run.name)
        ledger = read_ledger(store)
        pointer = store.read_pointer() if ledger.finished_at is not None else None
    except StoreError as e:
        # The resume is recorded; only what it leads to is unknown until the store is mended.
        print(f"run {run.name} is no longer halted (the resume is recorded)")
        _say(
            f"but {e}: the run stays unknown until "
            f"`respawn ledger repair -c {args.config} --run {run.name}`",
            err=True,
        )
        return EXIT_OK
    if ledger.finished_at is None:
        print(f"run {run.name} is no longer halted; the next tick acts on it")
        return EXIT_OK
    # A finished run is not restarted by a resume: say what would, instead of a false promise.
    step = "-" if pointer is None else str(pointer.step)
    # Right after a `terminate`, "not halted" reads as if the stop had not been taken back.
    halt = "no longer halted (the stop by hand is lifted)" if stopped_at else "not halted"
    if extended(run, Observation(run=run.name, pointer=pointer, ledger=ledger)):
        print(
            f"run {run.name}: {halt}; finished at step {step}, but target_step is now "
            f"{run.target_step}: the next tick extends it from step {step}"
        )
    else:
        print(
            f"run {run.name}: {halt}; finished at {when(ledger.finished_at)} (step {step}). "
            "resume does not restart a finished run: to extend it, raise runs[].target_step "
            "above the step it finished at; the next tick then launches it again."
        )
    return EXIT_OK


def cmd_ledger_repair(args: argparse.Namespace) -> int:
    """Rebuild a lost, unreadable or rolled-back ledger from every fencing source."""
    from respawn.controller.repair import repair_ledger
    from respawn.controller.stores import open_run_store
    from respawn.provisioning.base import Instance
    from respawn.store.schema import utcnow

    fleet = _load(args)
    run = fleet.run(args.run)
    instances: list[Instance] = []

    def collect(_name: str, provider: Provider) -> None:
        instances.extend(i for i in provider.list_instances(run.name) if i.billing)

    if not _per_provider(fleet, run, collect):
        # The instances' names are a fencing source: without them the repair could allocate
        # a generation that a live pod already has.
        print("respawn ledger repair: FAILED: a provider could not be listed", file=sys.stderr)
        return EXIT_FAILED
    try:
        store = open_run_store(fleet.store, run.name)
        gens = [i.generation for i in instances]
        ledger, notes = repair_ledger(store, gens, utcnow(), instances, run.budget)
    except Exception as e:  # the store is down or the key rejected: say so, no traceback
        _say(f"respawn ledger repair: FAILED: {type(e).__name__}: {e}", err=True)
        return EXIT_FAILED
    for note in notes:
        print(f"  {note}")
    halted = f"; halted: {ledger.halted}" if ledger.halted else ""
    print(f"run {run.name}: ledger rebuilt at generation {ledger.generation}{halted}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from respawn.controller.ledger import read_halt, read_ledger
    from respawn.controller.stores import open_run_store
    from respawn.store.store import StoreError

    fleet = _load(args)
    run = fleet.run(args.run)
    # A store that cannot be opened (no key, no secret) is the last resort's to report: the
    # remedy below is for a store whose documents cannot be read.
    store = open_run_store(fleet.store, run.name)
    try:
        ledger = read_ledger(store)
        order = read_halt(store)
    except StoreError as e:
        # The rolled-back pointer must carry the ledger's generation: never a guess.
        _say(
            f"respawn rollback: FAILED: {e}; mend it first (`respawn ledger repair -c "
            f"{args.config} --run {run.name}`, or `respawn terminate` for a halt order)",
            err=True,
        )
        return EXIT_FAILED
    if order is None or not order.halted:
        # A live pod would publish past the rolled-back step at its next checkpoint.
        raise UsageError(
            f"run {run.name} is not halted: `respawn terminate -c {args.config} --run {run.name}`"
            " first, then rollback, then `respawn resume`"
        )
    try:
        pointer = store.rollback_pointer(args.step, ledger.generation, "respawn rollback")
    except StoreError as e:
        print(f"respawn rollback: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"run {run.name}: latest.json → step {pointer.step}; "
        f"`respawn resume -c {args.config} --run {run.name}` relaunches from it"
    )
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from respawn.controller.config import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from respawn.controller.advice import run_warnings

    fleet = _load(args)
    if args.env:
        from respawn.controller.preflight import check_env

        pre = check_env(fleet, os.environ)
        if pre.errors or pre.warnings:
            print(pre.message(), file=sys.stderr)
        if pre.errors:
            return EXIT_FAILED
    print(f"{args.config}: ok ({len(fleet.runs)} run(s): {', '.join(r.name for r in fleet.runs)})")
    for r in fleet.runs:
        for w in run_warnings(r):
            print(f"warning: run {r.name}: {w}", file=sys.stderr)
    from respawn.controller.redact import MIN_SECRET, unmasked_secrets

    for name in unmasked_secrets(fleet, os.environ):
        print(
            f"warning: {name} is shorter than {MIN_SECRET} characters: respawn never masks "
            "so short a value in its output (it would mask unrelated text); use a longer secret",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from respawn.controller.doctor import run_doctor

    lines, ok = run_doctor(_load(args), live=args.live)
    _say("\n".join(lines))  # provider replies are quoted: redacted, no escape sequences
    return EXIT_OK if ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from respawn.examples.demo import run_demo

    return run_demo(workdir=args.workdir, keep=args.keep, scenario=args.scenario)


def cmd_ckpt(args: argparse.Namespace) -> int:
    from respawn.controller.ckpt_cli import run_ckpt

    return run_ckpt(args)


def cmd_logs(args: argparse.Namespace) -> int:
    from respawn.controller.logs_cli import cmd_logs as show
    from respawn.controller.stores import open_run_store

    fleet = _load(args)
    run = fleet.run(args.run)
    return show(args, open_run_store(fleet.store, run.name, read_only=True), args.redact)


def cmd_history(args: argparse.Namespace) -> int:
    from respawn.controller.history_cli import cmd_history as show

    fleet = _load(args)
    return show(args, fleet, args.redact)


def _version() -> str:
    # Not `respawn.__version__`: the controller imports only the parts the layout allows.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("respawn-gpu")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="respawn",
        description="Keep long GPU training runs alive on spot instances: observe each run, "
        "classify its health, re-provision and resume from the last verified checkpoint.",
    )
    p.add_argument("--version", action="version", version=f"respawn {_version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    p.add_argument(
        "--debug",
        action="store_true",
        help=f"a command that fails unexpectedly prints its traceback (or {DEBUG_ENV}=1)",
    )
    # `-v` is accepted after the subcommand too; SUPPRESS keeps a later default from
    # overwriting a `-v` given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks of failures"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
    ) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=text, description=text, parents=[common])

    def with_config(sp: argparse.ArgumentParser) -> None:
        # The remedies a report names (`respawn resume --run X`) carry no -c: with
        # RESPAWN_CONFIG set they run as copied.
        default = os.environ.get(CONFIG_ENV)
        sp.add_argument(
            "-c",
            "--config",
            default=Path(default) if default else None,
            type=Path,
            help=f"fleet config (YAML); default ${CONFIG_ENV}",
        )

    sp = command(sub, "demo", "the whole recovery loop on this machine, with a failure injected")
    sp.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    sp.add_argument("--keep", action="store_true", help="keep the temporary directory")
    sp.add_argument(
        "--scenario",
        choices=["reclaim", "degenerate"],
        default="reclaim",
        help="reclaim: the instance is killed; degenerate: reward drops to 0 (W&B rollback)",
    )
    sp.set_defaults(func=cmd_demo)

    sp = command(sub, "reconcile", "one controller tick: observe, classify, decide, act")
    with_config(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--dry-run", action="store_true", help="decide but change nothing")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_reconcile)

    sp = command(sub, "status", "observe and classify only; changes nothing")
    with_config(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_status)

    sp = command(
        sub,
        "offers",
        "ranked offers across providers: a run's (-c FLEET --run NAME), or any GPU (--gpu ...)",
    )
    sp.add_argument("-c", "--config", type=Path, help="fleet config: match a run's resources")
    sp.add_argument("--run", help="with -c: the run whose resources are matched")
    sp.add_argument("--gpu", action="append", help="without -c: a GPU name (repeatable), e.g. H100")
    sp.add_argument("--count", type=int, default=1, help="without -c: GPUs per instance")
    sp.add_argument("--min-vram", type=float, default=0, help="without -c: GB per GPU")
    sp.add_argument("--disk", type=float, default=50, help="without -c: disk GB")
    sp.add_argument(
        "--max-price", type=float, default=1000.0, help="without -c: $/h cap for the instance"
    )
    sp.add_argument(
        "--market",
        choices=["interruptible", "on_demand", "interruptible_then_on_demand"],
        default="interruptible_then_on_demand",
        help="without -c: which market (default: both)",
    )
    sp.add_argument(
        "--provider", action="append", help="without -c: only these clouds (default vast, runpod)"
    )
    sp.add_argument(
        "--api-url",
        action="append",
        metavar="NAME=URL",
        help="without -c: another API base URL for a cloud (a proxy, a test server)",
    )
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_offers)

    sp = command(sub, "plan", "what the next tick would launch, on which offer, at what price")
    with_config(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_plan)

    sp = command(sub, "history", "every generation of a run: instance, price, why it ended, cost")
    with_config(sp)
    sp.add_argument("--run", required=True, help="the run to show")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.add_argument("--plot", type=Path, metavar="FILE", help="also draw the run's timeline (SVG)")
    sp.set_defaults(func=cmd_history)

    sp = command(sub, "logs", "the trainer's recent output, from any generation (also one gone)")
    with_config(sp)
    sp.add_argument("--run", required=True, help="the run to show")
    sp.add_argument("--generation", type=int, help="this generation (default: the newest)")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    # For tests: stop following after N polls.
    sp.add_argument("--follow-rounds", type=int, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_logs)

    sp = command(sub, "terminate", "kill switch: halt the run and destroy its instances")
    with_config(sp)
    sp.add_argument("--run", required=True, help="the run to stop")
    sp.set_defaults(func=cmd_terminate)

    sp = command(sub, "diagnose", "GPU state, pod log tail and disk of a run's instances")
    with_config(sp)
    sp.add_argument("--run", required=True, help="the run to look at")
    sp.set_defaults(func=cmd_diagnose)

    sp = command(sub, "resume", "clear a halt so the controller acts on the run again")
    with_config(sp)
    sp.add_argument("--run", required=True, help="the halted run")
    sp.set_defaults(func=cmd_resume)

    sp = command(sub, "ledger", "the controller's ledger of a run")
    ls = sp.add_subparsers(dest="ledger_command", required=True, metavar="OP")
    rp = command(
        ls,
        "repair",
        "rebuild a lost or unreadable ledger from the pointer, heartbeat and instances",
    )
    with_config(rp)
    rp.add_argument("--run", required=True, help="the run whose ledger to rebuild")
    rp.set_defaults(func=cmd_ledger_repair)

    sp = command(sub, "rollback", "move a halted run's pointer back to an older verified step")
    with_config(sp)
    sp.add_argument("--run", required=True, help="the halted run")
    sp.add_argument("--step", required=True, type=int, help="a published step to go back to")
    sp.set_defaults(func=cmd_rollback)

    sp = command(sub, "validate", "check a fleet config")
    with_config(sp)
    sp.add_argument(
        "--env", action="store_true", help="also check every environment variable it names"
    )
    sp.set_defaults(func=cmd_validate)

    sp = command(sub, "doctor", "check the config, and with --live the clouds and store")
    with_config(sp)
    sp.add_argument("--live", action="store_true", help="make read-only calls with your keys")
    sp.set_defaults(func=cmd_doctor)

    sp = command(sub, "schema", "print the fleet config's JSON Schema (for editors)")
    sp.set_defaults(func=cmd_schema)

    ck = command(sub, "ckpt", "checkpoint store operations: ls, push, pull, gc")
    cks = ck.add_subparsers(dest="ckpt_command", required=True, metavar="OP")

    def store_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="file:///PATH or b2://BUCKET/PREFIX (or -c FLEET.yaml)")
        sp.add_argument("-c", "--config", type=Path, help="take the store URL from this config")
        sp.add_argument("--run", required=True, help="the run's name in the store")

    sp = command(cks, "ls", "list published steps, the pointer and the heartbeat")
    store_args(sp)
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.add_argument("--verify", action="store_true", help="download and hash every step")
    sp = command(cks, "push", "publish a directory as one step (files → manifest → pointer)")
    store_args(sp)
    sp.add_argument(
        "--dir",
        action="append",
        type=Path,
        help="a directory of the step (repeatable; several need --workdir); "
        "without --dir, -c FLEET --run NAME finds the step through the run's sources",
    )
    sp.add_argument("--workdir", type=Path, help="store paths are relative to this directory")
    sp.add_argument("--step", required=True, type=int, help="the step number to publish as")
    sp.add_argument("--generation", type=int, help="writer generation (default: the current one)")
    sp = command(cks, "pull", "restore the newest verified step into a directory")
    store_args(sp)
    sp.add_argument("--dest", required=True, type=Path, help="directory to restore into")
    sp = command(cks, "gc", "delete old steps, keeping the newest K (never the pointer's)")
    store_args(sp)
    sp.add_argument("--keep-last", type=int, default=3, help="steps to keep (default 3)")
    sp.add_argument("--keep-every", type=int, help="also keep steps divisible by this")
    ck.set_defaults(func=cmd_ckpt)
    return p


#: Set to 1 for the traceback of a command that fails unexpectedly (as `--debug`).
DEBUG_ENV = "RESPAWN_DEBUG"

#: Set by the reusable workflow to every secret its caller passed (`toJSON(secrets)`).
ENV_SECRETS_JSON = "RESPAWN_SECRETS_JSON"


def export_workflow_secrets(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Move the workflow's secrets into this process's environment under their own names, so
    the fleet config can name any secret without the workflow listing it. A variable already
    set wins; names that are not plain environment names (`github_token`) are skipped."""
    raw = environ.pop(ENV_SECRETS_JSON, None)
    if not raw:
        return
    try:
        secrets = json.loads(raw)
    except json.JSONDecodeError:
        print(f"respawn: {ENV_SECRETS_JSON} is not JSON; ignoring it", file=sys.stderr)
        return
    if not isinstance(secrets, dict):
        return
    for name, value in secrets.items():
        if isinstance(value, str) and re.fullmatch(r"[A-Z_][A-Z0-9_]*", str(name)):
            environ.setdefault(name, value)


def main(argv: list[str] | None = None) -> int:
    # Whatever a command prints reaches the GitHub runner, which reads workflow commands in it:
    # a pod's text must never become one (workflow_output).
    from respawn.controller.workflow_output import guarded_output

    with guarded_output():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    export_workflow_secrets()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Client libraries log requests at debug level, headers and tokens included: -v is for
    # respawn's own decisions, never for those.
    for noisy in ("b2sdk", "urllib3", "paramiko", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from respawn.controller.config import ConfigError

    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `respawn schema | head`: the reader left; say nothing more, and keep Python's own
        # flush at exit from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as e:
        print(f"respawn: config error:\n{e}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as e:
        print(f"respawn: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the last resort: a report, never a traceback (unless asked)
        return _failed(args, e)


def command_name(args: argparse.Namespace) -> str:
    """`status`, `ledger repair`, `ckpt ls`: the command as it was typed."""
    sub = getattr(args, "ledger_command", None) or getattr(args, "ckpt_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _failed(args: argparse.Namespace, e: BaseException) -> int:
    """One line naming the command and the error (redacted), exit 1; the traceback only with
    --debug or RESPAWN_DEBUG=1."""
    import traceback

    from respawn.controller.redact import one_line

    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV) == "1"
    if debug:
        trace = "".join(traceback.format_exception(e))
        print(_redact(trace).rstrip(), file=sys.stderr)
    hint = "" if debug else f" (--debug or {DEBUG_ENV}=1 shows the traceback)"
    line = f"respawn {command_name(args)}: FAILED: {type(e).__name__}: {e}{hint}"
    print(one_line(_redact(line), 2000), file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
