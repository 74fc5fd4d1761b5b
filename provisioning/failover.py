"""Failover: the cheapest fitting offer first, offer by offer, then provider by provider in
the run's order; and settling a launch race between two ticks on one rule.

With `market: interruptible_then_on_demand` every provider's spot offers are tried first, and
on-demand offers (in the same provider order) only when no spot instance launched.

- No capacity, or an instance that failed its read-back (price, market): the next offer.
- Bad key, API down, anything else: the next provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from respawn.provisioning.base import (
    Instance,
    LaunchSpec,
    NoCapacityError,
    Offer,
    Provider,
    ProviderError,
    Resources,
    VerificationError,
    markets_of,
    winner_order,
)

log = logging.getLogger("respawn.provisioning")
MAX_OFFERS_TRIED = 5


def launch_first_fit(
    order: Sequence[str],
    providers: Mapping[str, Provider | Exception],
    resources: Resources,
    spec_for: Callable[[str, Offer], LaunchSpec],
    redact: Callable[[str], str] = lambda s: s,
) -> tuple[Instance, Offer]:
    """Launch on the first offer that works. Raises ProviderError listing every attempt."""
    cap = resources.max_price_per_hour
    wanted = markets_of(resources.market)
    tried: list[str] = []
    given_up: set[str] = set()
    for market in wanted:
        for name in order:
            provider = providers.get(name)
            if name in given_up:
                continue
            if provider is None or isinstance(provider, Exception):
                tried.append(f"{name}: {provider or 'not configured'}")
                given_up.add(name)
                continue
            if not set(provider.markets) & set(wanted):
                tried.append(
                    f"{name}: rents {' or '.join(provider.markets)} only; this run allows "
                    f"{resources.market} (set resources.market to include it)"
                )
                given_up.add(name)
                continue
            if market not in provider.markets:
                continue
            try:
                # One market at a time: on-demand is searched only when spot launched nothing.
                got = provider.offers(resources.model_copy(update={"market": market}))
            except ProviderError as e:
                tried.append(redact(f"{name}: offers failed: {e}"))
                given_up.add(name)
                continue
            offers = [o for o in got if o.market == market and o.price_per_hour <= cap]
            if not offers:
                tried.append(f"{name}: no {market} offer under ${cap:g}/h")
                continue
            for offer in offers[:MAX_OFFERS_TRIED]:
                spec = spec_for(name, offer)
                try:
                    mine = provider.launch(offer, spec)
                except (NoCapacityError, VerificationError) as e:
                    tried.append(redact(f"{name} offer {offer.id}: {e}"))
                    continue
                except ProviderError as e:  # bad key, API down: the next provider
                    tried.append(redact(f"{name}: {e}"))
                    given_up.add(name)
                    break
                return settle_race(provider, mine), offer
    raise ProviderError("no instance launched: " + "; ".join(tried))


def settle_race(provider: Provider, mine: Instance) -> Instance:
    """Two ticks at once may both launch the same generation. Each launcher looks again after
    its launch; `winner_order` (earliest created, then id) picks one and a loser destroys its
    own, so the pair settles on one instance without a lock."""
    try:
        twins = [
            i
            for i in provider.list_instances(mine.run)
            if i.generation == mine.generation and i.billing
        ]
    except ProviderError as e:
        log.warning("could not check for a concurrent launch: %s", e)
        return mine
    winner = min([*twins, mine], key=winner_order)
    if winner.id != mine.id:
        log.warning("a concurrent tick launched %s first; destroying ours (%s)", winner.id, mine.id)
        provider.terminate(mine.id)
    return winner
