"""Alerts reach a person once per change of state, through a webhook and GitHub annotations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from respawn.controller.act import act
from respawn.controller.config import FleetConfig
from respawn.controller.decide import decide
from respawn.controller.ledger import read_ledger
from respawn.controller.model import Health, Notify, Observation, RunReport
from respawn.controller.notify import annotation
from respawn.controller.report import annotation_lines, exit_code, to_markdown
from respawn.store.file_backend import FileBackend
from respawn.store.store import CheckpointStore
from tests.fakes.webhook import FakeWebhook
from tests.test_decide import NOW, RUN, M, hb, inst, ledger, obs


def messages_over(ticks: list[Observation]) -> list[str | None]:
    """decide over successive ticks, each starting from the previous tick's ledger."""
    told: list[str | None] = []
    led = ticks[0].ledger
    for i, o in enumerate(ticks):
        plan = decide(RUN, o.model_copy(update={"ledger": led}), NOW + i * M)
        told.append(plan.notify.level if plan.notify else None)
        led = plan.ledger
    return told


def test_once_per_change_of_state_and_a_recovery_is_announced() -> None:
    healthy = obs(heartbeat=hb(1, step=120))
    dead = obs(instances=(), heartbeat=None)
    starting = obs(heartbeat=None, instances=(inst(2),))
    back = obs(heartbeat=hb(2, step=130, ago=-4 * M), instances=(inst(2),))
    told = messages_over([healthy, healthy, dead, starting, back, back])
    # starting is the middle of the recovery already told; healthy again is told once
    assert told == [None, None, "warning", None, "notice", None]


def test_flapping_signals_are_told_per_change_not_per_tick() -> None:
    ok, unknown = obs(heartbeat=hb(1, step=120)), obs(errors=("vast: 503",))
    assert messages_over([ok, unknown, unknown, ok]) == [None, "error", None, "notice"]


def test_an_unreadable_ledger_sends_nothing_since_it_cannot_remember() -> None:
    plan = decide(RUN, obs(errors=("ledger: boom",), ledger_state="unreadable"), NOW)
    assert plan.notify is None


def _report(o: Observation, results: tuple = ()) -> RunReport:  # type: ignore[type-arg]
    plan = decide(RUN, o, NOW)
    return RunReport(run="r", observation=o, plan=plan, results=results)


def test_a_halted_run_fails_the_workflow_once() -> None:
    spent = ledger(gen=3, launched=60 * M)  # 3 launches in 24 h: the breaker trips
    halting = _report(obs(ledger=spent, instances=()))
    assert halting.plan.ledger.halted and exit_code([halting]) == 1
    assert halting.plan.notify is not None and "halted" in halting.plan.notify.message
    after = _report(obs(ledger=halting.plan.ledger))
    assert after.plan.verdict.health is Health.HALTED
    assert after.plan.notify is None and exit_code([after]) == 0


def test_alerts_are_not_marked_as_successes_in_the_step_summary() -> None:
    from respawn.controller.model import ActionResult, Alert

    o = obs(errors=("vast: 503",))
    r = _report(o, (ActionResult(action=Alert(message="r: unknown"), ok=True),))
    assert "⚠️ `alert" in to_markdown([r]) and "✅" not in to_markdown([r])


def test_annotation_is_one_escaped_line() -> None:
    line = annotation(Notify(level="error", message="r halted: 100%\r\nbroken"))
    assert line == "::error title=respawn::r halted: 100%25 broken"


@pytest.fixture
def hook() -> Iterator[FakeWebhook]:
    h = FakeWebhook()
    yield h
    h.stop()


def _fleet(tmp: Path) -> FleetConfig:
    return FleetConfig.model_validate(
        {
            "store": {"url": f"file://{tmp / 'store'}"},
            "providers": {"local": {"state_dir": str(tmp / "local")}},
            "notify": {"webhook_url_env": "RESPAWN_WEBHOOK_URL"},
            "runs": [RUN.model_dump(mode="json")],
        }
    )


def test_the_webhook_gets_slack_and_discord_json_once_and_never_the_url(
    tmp_path: Path, hook: FakeWebhook
) -> None:
    url = hook.start()
    hook.fail_next = [503]  # one transient failure: retried
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "r")
    o = obs(ledger=ledger(halted="budget cap"), instances=(inst(1),))
    env = {"RESPAWN_WEBHOOK_URL": url}
    plan = decide(RUN, o, NOW)
    results = act(plan, RUN, _fleet(tmp_path), store, {}, o.ledger, environ=env)
    sent = results[-1]
    assert sent.ok, sent.detail
    (msg,) = hook.messages
    assert msg["text"] == msg["content"] and "r is halted: budget cap" in msg["text"]
    assert "secret-token" not in sent.detail
    report = RunReport(run="r", observation=o, plan=plan, results=(), notified=sent)
    assert annotation_lines([report]) == ["::error title=respawn::r is halted: budget cap"]
    # The ledger remembers: the next tick sends nothing.
    again = decide(RUN, o.model_copy(update={"ledger": read_ledger(store)}), NOW + M)
    assert again.notify is None


def test_a_failed_webhook_is_reported_and_retried_next_tick(tmp_path: Path) -> None:
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "r")
    o = obs(ledger=ledger(halted="budget cap"))
    plan = decide(RUN, o, NOW)
    results = act(plan, RUN, _fleet(tmp_path), store, {}, o.ledger, environ={})
    assert not results[-1].ok and "RESPAWN_WEBHOOK_URL" in results[-1].detail
    assert read_ledger(store).notified is None


def test_every_health_state_either_notifies_with_a_level_or_stays_quiet() -> None:
    """A state added later must not crash the tick that first meets it."""
    from respawn.controller.model import Health, Ledger, Verdict
    from respawn.controller.notify import notification

    for health in Health:
        verdict = Verdict(health=health, reason="r")
        for remembered in (Ledger(run="x"), Ledger(run="x", generation=2, notified=Health.DEAD)):
            notification("x", verdict, remembered)


def test_a_hostile_message_reaches_the_webhook_redacted_and_inert(
    tmp_path: Path, hook: FakeWebhook
) -> None:
    """A pod's failure message is quoted in the notification: it must not ping a channel,
    disguise a link, spread over lines or carry a secret it echoed (issue 19.9)."""
    from respawn.store.schema import Heartbeat

    url = hook.start()
    secret = "b2-controller-key-0123456789"
    hostile = (
        f"oom <!channel> <!here> <@U024BE7LH> @everyone @here\n"
        f"*fixed*: see <https://evil.example/login|the dashboard> or [docs](https://evil.example)"
        f" key={secret}"
    )
    failed = Heartbeat(
        run="r", generation=1, writer="w", at=NOW, phase="failed", message=hostile, step=100
    )
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "r")
    o = obs(heartbeat=failed)
    plan = decide(RUN, o, NOW)
    assert plan.notify is not None and "<!channel>" in plan.notify.message
    env = {"RESPAWN_WEBHOOK_URL": url, "B2_APPLICATION_KEY": secret}
    results = act(plan, RUN, _fleet(tmp_path), store, {}, o.ledger, environ=env)
    assert results[-1].ok, results[-1].detail
    (msg,) = hook.messages
    slack, discord = msg["text"], msg["content"]
    for text in (slack, discord):
        assert "oom" in text and "dashboard" in text  # the message is still there, as text
        assert secret not in text and "***" in text.replace("\\", "")
        assert "\n" not in text and "\r" not in text
        assert "@everyone" not in text and "@here" not in text
    # Slack reads `<...>` as a mention or a link: escaped as Slack documents (&lt; &gt; &amp;).
    assert "<" not in slack and ">" not in slack
    # Discord: no mention is parsed at all, no link is previewed, no markup is rendered.
    assert msg["allowed_mentions"] == {"parse": []}
    assert "<@" not in discord.replace("\\<@", "") and "](" not in discord.replace("\\](", "")
