"""`respawn` command line. Heavy modules are imported inside each command so `--help` is fast."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from respawn.controller.config import FleetConfig, RunConfig
    from respawn.provisioning.base import Provider

from respawn.controller.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

#: The secrets of the loaded config, masked in whatever this command prints (`_load`).
_redact: Callable[[str], str] = str


def _load(args: argparse.Namespace) -> FleetConfig:
    """The fleet config; from here on every log line and every printed text is redacted of
    the secrets it names (`args.redact` for the reports)."""
    import os

    from respawn.controller.config import load_config
    from respawn.controller.redact import Redactor, install_log_redaction

    global _redact
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
            _say(f"{name}: {e}", err=True)
    return ok


def cmd_reconcile(args: argparse.Namespace) -> int:
    from respawn.controller.reconcile import Mode, tick
    from respawn.controller.report import dumps, exit_code, to_text, write_step_summary

    fleet = _load(args)
    reports = tick(fleet, only=args.run, mode=Mode.DRY_RUN if args.dry_run else Mode.ACT)
    print(dumps(reports, args.redact) if args.json else to_text(reports, args.redact))
    write_step_summary(reports, args.redact)
    return exit_code(reports)


def cmd_status(args: argparse.Namespace) -> int:
    from respawn.controller.reconcile import Mode, tick
    from respawn.controller.report import dumps, exit_code, to_text

    fleet = _load(args)
    reports = tick(fleet, only=args.run, mode=Mode.OBSERVE)
    print(dumps(reports, args.redact) if args.json else to_text(reports, args.redact))
    return exit_code(reports)


def cmd_offers(args: argparse.Namespace) -> int:
    from respawn.provisioning.base import Offer

    fleet = _load(args)
    run = fleet.run(args.run)
    offers: list[Offer] = []
    ok = _per_provider(fleet, run, lambda _name, p: offers.extend(p.offers(run.resources)))
    offers.sort(key=lambda o: o.price_per_hour)
    if args.json:
        print(json.dumps([o.model_dump(mode="json") for o in offers], indent=2))
    else:
        from respawn.provisioning.offers import matching_names

        for line in matching_names(run.resources, run.providers):
            print(line)
        print(
            f"{'provider':<8} {'offer':<14} {'gpu':<14} {'n':>2} {'vram':>6} {'$/h':>8} "
            f"{'market':<13} location"
        )
        for o in offers:
            _say(
                args,
                f"{o.provider:<8} {o.id:<14} {o.gpu_name:<14} {o.gpu_count:>2} "
                f"{o.vram_gb:>5.0f}G {o.price_per_hour:>8.3f} {o.market:<13} {o.location or ''}",
            )
    return EXIT_OK if ok or offers else EXIT_FAILED


def _record_halt(fleet: FleetConfig, run_name: str, halted: bool, reason: str) -> str | None:
    """Write the run's halt order. Returns None, or why it could not be written."""
    from respawn.controller.ledger import write_halt
    from respawn.controller.model import HaltOrder
    from respawn.controller.stores import open_run_store
    from respawn.store.schema import utcnow

    try:
        store = open_run_store(fleet.store, run_name)
        write_halt(store, HaltOrder(halted=halted, reason=reason, at=utcnow()))
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
    from respawn.store.schema import utcnow

    fleet = _load(args)
    run = fleet.run(args.run)
    # Destroy first: a store that cannot be written (or a rejected key) never keeps the kill
    # switch from killing. Then record the halt, so that no tick launches again, and sweep
    # once more for a launch that raced this command.
    _, destroyed_all = _destroy_all(fleet, run)
    when = f"{utcnow():%Y-%m-%d %H:%M}Z"
    halt_error = _record_halt(fleet, run.name, True, f"`respawn terminate` at {when}")
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
        hb = open_run_store(fleet.store, run_name).read_heartbeat()
    except StoreError as e:
        print(f"heartbeat unreadable ({e}): no SSH host key to trust", file=sys.stderr)
        return {}
    return {hb.generation: hb.ssh_host_keys} if hb is not None else {}


def cmd_diagnose(args: argparse.Namespace) -> int:
    fleet = _load(args)
    run = fleet.run(args.run)

    host_keys = _published_host_keys(fleet, run.name)

    def show(name: str, provider: Provider) -> None:
        for inst in provider.list_instances(run.name):
            _say(f"== {name}:{inst.id} {inst.name} ({inst.state.value})")
            diagnose = getattr(provider, "diagnose", None)
            if diagnose is None or not inst.live:
                print("   (no shell access)")
                continue
            for section, text in diagnose(inst.id, host_keys.get(inst.generation, ())).items():
                print(f"-- {section}")
                _say(text.rstrip())  # the pod's own output: anything may be in it

    return EXIT_OK if _per_provider(fleet, run, show) else EXIT_FAILED


def cmd_resume(args: argparse.Namespace) -> int:
    from respawn.store.schema import utcnow

    fleet = _load(args)
    run = fleet.run(args.run)
    error = _record_halt(fleet, run.name, False, f"`respawn resume` at {utcnow():%Y-%m-%d %H:%M}Z")
    if error is not None:
        _say(f"respawn resume: FAILED: could not record the resume ({error})", err=True)
        return EXIT_FAILED
    print(f"run {run.name} is no longer halted; the next tick acts on it")
    return EXIT_OK


def cmd_ledger_repair(args: argparse.Namespace) -> int:
    """Rebuild a lost, unreadable or rolled-back ledger from every fencing source."""
    from respawn.controller.ledger import repair_ledger
    from respawn.controller.stores import open_run_store
    from respawn.store.schema import utcnow

    fleet = _load(args)
    run = fleet.run(args.run)
    generations: list[int] = []

    def collect(_name: str, provider: Provider) -> None:
        generations.extend(i.generation for i in provider.list_instances(run.name) if i.billing)

    if not _per_provider(fleet, run, collect):
        # The instances' names are a fencing source: without them the repair could allocate
        # a generation that a live pod already has.
        print("respawn ledger repair: FAILED: a provider could not be listed", file=sys.stderr)
        return EXIT_FAILED
    try:
        store = open_run_store(fleet.store, run.name)
        ledger, notes = repair_ledger(store, generations, utcnow())
    except Exception as e:  # the store is down or the key rejected: say so, no traceback
        _say(f"respawn ledger repair: FAILED: {type(e).__name__}: {e}", err=True)
        return EXIT_FAILED
    for note in notes:
        print(f"  {note}")
    print(f"run {run.name}: ledger rebuilt at generation {ledger.generation}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from respawn.controller.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from respawn.provisioning.registry import grace_warnings

    fleet = _load(args)
    print(f"{args.config}: ok ({len(fleet.runs)} run(s): {', '.join(r.name for r in fleet.runs)})")
    for r in fleet.runs:
        for w in grace_warnings(r.providers, r.pod.term_grace.total_seconds()):
            print(f"warning: run {r.name}: {w}", file=sys.stderr)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from respawn.controller.doctor import run_doctor

    lines, ok = run_doctor(_load(args), live=args.live)
    _say("\n".join(lines))  # provider replies are quoted: redacted, no escape sequences
    return EXIT_OK if ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from respawn.examples.demo import run_demo

    return run_demo(workdir=args.workdir, keep=args.keep)


def cmd_ckpt(args: argparse.Namespace) -> int:
    from respawn.controller.ckpt_cli import run_ckpt

    return run_ckpt(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="respawn",
        description="Keep long GPU training runs alive on spot instances: observe each run, "
        "classify its health, re-provision and resume from the last verified checkpoint.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", required=True, type=Path, help="fleet config (YAML)")

    sp = sub.add_parser("demo", help="the whole recovery loop on this machine, with a failure")
    sp.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    sp.add_argument("--keep", action="store_true", help="keep the temporary directory")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("reconcile", help="one controller tick: observe, classify, decide, act")
    with_config(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--dry-run", action="store_true", help="decide but change nothing")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_reconcile)

    sp = sub.add_parser("status", help="observe and classify only")
    with_config(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("offers", help="ranked offers across the run's providers")
    with_config(sp)
    sp.add_argument("--run", required=True)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_offers)

    sp = sub.add_parser("terminate", help="kill switch: halt the run and destroy its instances")
    with_config(sp)
    sp.add_argument("--run", required=True)
    sp.set_defaults(func=cmd_terminate)

    sp = sub.add_parser("diagnose", help="GPU state, pod log tail and disk of a run's instances")
    with_config(sp)
    sp.add_argument("--run", required=True)
    sp.set_defaults(func=cmd_diagnose)

    sp = sub.add_parser("resume", help="clear a halt so the controller acts on the run again")
    with_config(sp)
    sp.add_argument("--run", required=True)
    sp.set_defaults(func=cmd_resume)

    sp = sub.add_parser("ledger", help="the controller's ledger of a run")
    ls = sp.add_subparsers(dest="ledger_command", required=True, metavar="OP")
    rp = ls.add_parser(
        "repair",
        help="rebuild a lost or unreadable ledger from the pointer, heartbeat and instances",
    )
    with_config(rp)
    rp.add_argument("--run", required=True)
    rp.set_defaults(func=cmd_ledger_repair)

    sp = sub.add_parser("validate", help="check a fleet config")
    with_config(sp)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("doctor", help="check the config, and with --live the clouds and store")
    with_config(sp)
    sp.add_argument("--live", action="store_true", help="make read-only calls with your keys")
    sp.set_defaults(func=cmd_doctor)

    sp = sub.add_parser("schema", help="print the fleet config's JSON Schema (for editors)")
    sp.set_defaults(func=cmd_schema)

    ck = sub.add_parser("ckpt", help="checkpoint store operations")
    cks = ck.add_subparsers(dest="ckpt_command", required=True, metavar="OP")

    def store_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="file:///PATH or b2://BUCKET/PREFIX (or -c FLEET.yaml)")
        sp.add_argument("-c", "--config", type=Path, help="take the store URL from this config")
        sp.add_argument("--run", required=True)

    sp = cks.add_parser("ls", help="list published steps, the pointer and the heartbeat")
    store_args(sp)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--verify", action="store_true", help="download and hash every step")
    sp = cks.add_parser("push", help="publish a directory as one step (files → manifest → pointer)")
    store_args(sp)
    sp.add_argument(
        "--dir",
        action="append",
        type=Path,
        help="a directory of the step (repeatable; several need --workdir); "
        "without --dir, -c FLEET --run NAME finds the step through the run's sources",
    )
    sp.add_argument("--workdir", type=Path, help="store paths are relative to this directory")
    sp.add_argument("--step", required=True, type=int)
    sp.add_argument("--generation", type=int, help="writer generation (default: the current one)")
    sp = cks.add_parser("pull", help="restore the newest verified step into a directory")
    store_args(sp)
    sp.add_argument("--dest", required=True, type=Path)
    sp = cks.add_parser("gc", help="delete old steps, keeping the newest K (never the pointer's)")
    store_args(sp)
    sp.add_argument("--keep-last", type=int, default=3)
    sp.add_argument("--keep-every", type=int, help="also keep steps divisible by this")
    ck.set_defaults(func=cmd_ckpt)
    return p


def main(argv: list[str] | None = None) -> int:
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
        return int(args.func(args))
    except ConfigError as e:
        print(f"respawn: config error:\n{e}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as e:
        print(f"respawn: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
