"""Adversarial review of the views added for issue 21 (offers, plan, history, logs): text a
provider or a pod controls reaches them, so each is redacted before it is cut and shown inert.
Driven through the CLI against the loopback fakes and a file store."""

from __future__ import annotations

import json

from tests.test_preview import _env, cli


def test_a_provider_echoing_its_key_in_an_offer_never_prints_it(clouds: tuple) -> None:
    """Attack: a search answer quotes the caller's API key in a field (`geolocation`), placed
    so the table's 40-character column cuts it. `--json` printed the key whole (no redaction
    at all), the table printed its first characters (cut first, redacted after)."""
    vast, _ = clouds
    key = vast.api_key
    for row in vast.offers.values():
        row["geolocation"] = "x" * 30 + key
    env = _env(VAST_API_KEY=key)
    args = ["offers", "--gpu", "RTX_4090", "--provider", "vast", "--api-url", f"vast={vast.url}"]
    as_json = cli(*args, "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout), "the fake answered no offer"
    table = cli(*args, env=env)
    assert table.returncode == 0, table.stderr
    for out in (as_json.stdout + as_json.stderr, table.stdout + table.stderr):
        assert key[:8] not in out, out
