"""`respawn doctor --live`: read-only calls with the user's keys that check what respawn relies
on before the first launch does: each provider's replies (every field an adapter reads is
present and of the expected type), the checkpoint store (readable), and the secrets named in
the config (set). Nothing is created, changed or destroyed."""

from __future__ import annotations

import os
from collections.abc import Mapping

from respawn.controller.advice import run_warnings
from respawn.controller.config import FleetConfig
from respawn.controller.preflight import check_env
from respawn.controller.providers import open_providers
from respawn.controller.stores import open_run_store
from respawn.provisioning.base import ProviderError


def run_doctor(
    fleet: FleetConfig, live: bool, environ: Mapping[str, str] | None = None
) -> tuple[list[str], bool]:
    """Lines to print and whether everything checked out."""
    env = os.environ if environ is None else environ
    lines: list[str] = []
    ok = True
    # The same verdict as `validate --env`: one list of variables (controller/preflight.py).
    pre = check_env(fleet, env)
    if pre.errors:
        ok = False
        lines += [f"not set: {e}" for e in pre.errors]
    lines += [f"warning: {w}" for w in pre.warnings]
    for run in fleet.runs:
        lines += [f"warning: run {run.name}: {w}" for w in run_warnings(run)]
    if not live:
        lines.append("config ok; pass --live to check the clouds and the store with your keys")
        return lines, ok
    names = sorted({p for run in fleet.runs for p in run.providers})
    for name, provider in open_providers(fleet, names, env).items():
        if isinstance(provider, Exception):
            ok = False
            lines.append(f"{name}: cannot open: {provider}")
            continue
        try:
            found = provider.check_live()
        except ProviderError as e:
            ok, found = False, [f"{name}: a read-only call failed: {e}"]
        if found:
            ok = False
            lines += found
        else:
            lines.append(f"{name}: ok (every field respawn reads is there, with its type)")
    for run in fleet.runs:
        try:
            pointer = open_run_store(fleet.store, run.name).read_pointer()
        except Exception as e:  # any store failure is a finding, not a crash
            ok = False
            lines.append(f"store: run {run.name}: cannot read: {type(e).__name__}: {e}")
            continue
        at = f"latest step {pointer.step}" if pointer else "no checkpoint yet"
        lines.append(f"store: run {run.name}: readable ({at})")
    return lines, ok
