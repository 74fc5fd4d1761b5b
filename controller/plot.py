"""A picture of a run: step progress of every generation over time, the gaps between them
(downtime) and the money spent, as one SVG (`respawn history --plot FILE`, and the tick's
summary artifact).

Drawn by pygal (pure Python, SVG out, one small dependency) and only on the controller side:
the pod image never imports this. pygal's default pulls a tooltip script from the web; the
file written here loads nothing.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from respawn.controller.history import RunHistory


def render_svg(hist: RunHistory, now: datetime) -> bytes:
    import pygal  # controller-only, imported when a picture is asked for

    chart = pygal.DateTimeLine(
        title=(
            f"{hist.run}: ${hist.total_cost:.2f} spent, {len(hist.generations)} generations, "
            f"{hist.total_downtime_s / 60:.0f} min down, {hist.total_steps_lost} steps lost"
        ),
        x_title="time (UTC)",
        y_title="step",
        x_label_rotation=20,
        x_value_formatter=lambda t: t.strftime("%m-%d %H:%M"),
        show_dots=True,
        dots_size=2,
        js=[],
        width=1000,
        height=450,
        legend_at_bottom=True,
        truncate_legend=-1,
    )
    spend: list[tuple[datetime, float]] = []
    total = 0.0
    for g in hist.generations:
        if g.instance_id is None:
            continue
        start = g.resume_step or 0
        end_at = g.ended_at or now
        points = [(g.started_at, start)]
        if g.last_step is not None and g.last_progress_at is not None:
            points.append((g.last_progress_at, g.last_step))
        points.append((end_at, g.last_step if g.last_step is not None else start))
        label = f"g{g.generation} {g.provider or '?'} ${g.price_per_hour:.2f}/h"
        if g.end_reason:
            label += f" ({g.end_reason})"
        chart.add(label, sorted(points, key=lambda p: p[0]))
        spend.append((g.started_at, total))
        total += g.cost
        spend.append((end_at, total))
    if spend:
        chart.add("spend ($)", spend, secondary=True, stroke_style={"dasharray": "4, 4"})
    return bytes(chart.render())


def write_plot(hist: RunHistory, now: datetime, path: Path) -> None:
    data = render_svg(hist, now)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # a reader (the artifact upload) never sees half a picture
