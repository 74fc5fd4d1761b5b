"""Looking before spending: the market across providers (`respawn offers --gpu ...`, no
config needed) and what the next tick would launch, on which offer, at what price
(`respawn plan`). Read-only: offers are searched, nothing is created."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict

from respawn.controller.config import RunConfig
from respawn.controller.model import Provision, RunReport
from respawn.controller.providers import MissingKeyError
from respawn.controller.redact import NO_REDACTION, one_line
from respawn.provisioning.base import Offer, Provider, Resources, Secrets
from respawn.provisioning.offers import select
from respawn.provisioning.registry import REGISTRY

log = logging.getLogger("respawn.controller")

#: Clouds searched when no config names any (the local provider has no market).
MARKET_PROVIDERS = ("vast", "runpod")


#: The settings field that holds each cloud's API base URL.
URL_FIELD = {"vast": "server_url", "runpod": "api_url"}


def open_market_providers(
    names: Iterable[str], environ: Mapping[str, str], urls: Mapping[str, str] | None = None
) -> dict[str, Provider | Exception]:
    """Each cloud with its default settings and the API key from its usual variable; `urls`
    replaces a cloud's API base URL (validated as in a config: https, or http to loopback)."""
    out: dict[str, Provider | Exception] = {}
    for name in names:
        entry = REGISTRY.get(name)
        if entry is None or entry.needs_settings:
            out[name] = ValueError(f"{name}: no market to search without a config")
            continue
        fields = {URL_FIELD[name]: urls[name]} if urls and name in urls else {}
        try:
            settings = entry.settings.model_validate(fields)
        except ValueError as e:
            out[name] = ValueError(f"{name}: {e}")
            continue
        key_env = getattr(settings, "api_key_env", None)
        if key_env and not environ.get(key_env):
            out[name] = MissingKeyError(f"{name}: environment variable {key_env} is not set")
            continue
        try:
            out[name] = entry.factory(settings, Secrets(environ, None))
        except Exception as e:  # a bad key or URL: this cloud is skipped, the others answer
            out[name] = e
    return out


def gather_offers(
    providers: Mapping[str, Provider | Exception], res: Resources
) -> tuple[list[Offer], dict[str, str]]:
    """Every provider's matching offers at once, merged cheapest first; a provider that fails
    is named in the errors and skipped."""
    errors = {n: str(p) for n, p in providers.items() if isinstance(p, Exception)}
    live = {n: p for n, p in providers.items() if not isinstance(p, Exception)}
    offers: list[Offer] = []
    if not live:
        return offers, errors
    with ThreadPoolExecutor(max_workers=len(live)) as pool:
        futures = {n: pool.submit(p.offers, res) for n, p in live.items()}
    for name, fut in futures.items():
        try:
            offers += fut.result()
        except Exception as e:
            msg = str(e)
            errors[name] = msg if msg.startswith(f"{name}:") else f"{name}: {msg}"
    return select(offers, res), errors


class LaunchPreview(BaseModel):
    model_config = ConfigDict(frozen=True)

    run: str
    generation: int
    resume_step: int | None
    reason: str
    offer: Offer | None
    alternatives: tuple[Offer, ...] = ()
    errors: tuple[str, ...] = ()


def preview_launch(
    run: RunConfig,
    report: RunReport,
    providers: Mapping[str, Provider | Exception],
    alternatives: int = 3,
) -> LaunchPreview | None:
    """The offer the next tick's launch would take: failover order, cheapest fitting offer of
    the first provider that has one (`launch_first_fit`). None when the plan launches
    nothing."""
    provision = next((a for a in report.plan.actions if isinstance(a, Provision)), None)
    if provision is None:
        return None
    errors: list[str] = []
    ranked: list[Offer] = []
    for name in run.providers:
        found, failed = gather_offers({name: providers.get(name, KeyError(name))}, run.resources)
        errors += failed.values()
        ranked += found
    return LaunchPreview(
        run=run.name,
        generation=provision.generation,
        resume_step=provision.resume_step,
        reason=provision.reason,
        offer=ranked[0] if ranked else None,
        alternatives=tuple(ranked[1 : 1 + alternatives]),
        errors=tuple(errors),
    )


def offer_line(o: Offer, redact: Callable[[str], str] = NO_REDACTION) -> str:
    """One row of the offers table; the cloud's own words (ids, names, places) redacted, then
    cleaned and cut to their column (cutting first could leave a secret's prefix)."""

    def safe(text: str, limit: int) -> str:
        return one_line(redact(text), limit)

    return (
        f"{safe(o.provider, 8):<8} {safe(o.id, 14):<14} {safe(o.gpu_name, 16):<16} "
        f"{o.gpu_count:>2} {o.vram_gb:>5.0f}G {o.price_per_hour:>8.3f} {o.market:<13} "
        f"{safe(o.location or '', 40)}"
    )


OFFER_HEADER = (
    f"{'PROVIDER':<8} {'OFFER':<14} {'GPU':<16} {'N':>2} {'VRAM':>6} {'$/H':>8} "
    f"{'MARKET':<13} LOCATION"
)


def preview_lines(
    previews: Sequence[LaunchPreview | None],
    reports: Sequence[RunReport],
    redact: Callable[[str], str] = NO_REDACTION,
) -> list[str]:
    """Each untrusted piece redacted before it is cut, then made one inert line."""
    lines = []
    for report, pv in zip(reports, previews, strict=True):
        v = report.plan.verdict
        if pv is None:
            acts = ", ".join(a.kind for a in report.plan.actions) or "nothing"
            lines.append(f"{report.run}: {v.health.value}: launches nothing ({acts})")
            lines.append(f"  because: {one_line(redact(v.reason))}")
            continue
        start = "a fresh start" if pv.resume_step is None else f"step {pv.resume_step}"
        lines.append(f"{report.run}: {v.health.value}: would launch g{pv.generation} from {start}")
        lines.append(f"  because: {one_line(redact(pv.reason))}")
        if pv.offer is None:
            lines.append("  no offer fits the run's resources now: the tick would retry later")
        else:
            lines.append(f"  on:   {offer_line(pv.offer, redact)}")
            lines += [f"  else: {offer_line(o, redact)}" for o in pv.alternatives]
        lines += [f"  skipped: {one_line(redact(e))}" for e in pv.errors]
    return lines
