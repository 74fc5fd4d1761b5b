"""The fleet config is parsed once, by libyaml where PyYAML has it (issue 15: a 50-run config
took 87 ms in the pure-Python parser, twice), with the same errors as before."""

from __future__ import annotations

import pytest
import yaml

from respawn.controller import config
from respawn.controller.config import ConfigError, parse_config

FLEET = """\
store:
  url: file:///tmp/respawn-test-store
runs:
  - name: a
    pod:
      command: train --resume {resume_step}
      checkpoints:
        sources: [{path: "ckpt/step_{step}", marker: DONE}]
    resources: {max_price_per_hour: 1}
    providers: [local]
    budget: {max_spend_per_day: 10}
    health: {stal_after: 5m}
"""


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_the_c_parser_reads_the_config() -> None:
    assert issubclass(config._UniqueKeyLoader, yaml.CSafeLoader)


def test_text_is_composed_once_with_lines_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    composed: list[int] = []
    real = config._UniqueKeyLoader.get_single_node

    def counted(self: object) -> object:
        composed.append(1)
        return real(self)  # type: ignore[arg-type]

    monkeypatch.setattr(config._UniqueKeyLoader, "get_single_node", counted)
    monkeypatch.setattr(yaml, "compose", lambda *a, **k: pytest.fail("parsed a second time"))
    with pytest.raises(ConfigError) as err:
        parse_config(FLEET, "fleet.yaml")
    assert "fleet.yaml:12: runs[0].health.stal_after: unknown field" in str(err.value)
    assert len(composed) == 1


def test_duplicate_key_still_names_both_lines() -> None:
    with pytest.raises(
        ConfigError, match=r"fleet.yaml:3:.*duplicate key 'store' \(first on line 1\)"
    ):
        parse_config(FLEET.replace("runs:", "store: {url: file:///x}\nruns:", 1), "fleet.yaml")
