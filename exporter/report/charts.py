"""Charts with matplotlib (the optional `report` extra): power by component, cumulative
emissions, grid intensity. Without matplotlib the report says so instead of failing."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class Image:
    title: str
    ext: str  # png or svg
    data: bytes

    @property
    def mime(self) -> str:
        return "image/svg+xml" if self.ext == "svg" else "image/png"


MISSING = ("charts not available: install the optional extra "
           "(pip install 'carbon-exporter[report]') for matplotlib")


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_all(document: dict, ext: str) -> dict[str, Image]:
    if not available():
        return {}
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num

    series = document["series"]
    width = series["bucket_seconds"]
    start, end = _time(document["query"]["from"]), _time(document["query"]["to"])
    # Buckets as the tables count them: from --from, the last one cut at --to.
    edges = [min(t + width, end) for t in series["t"]]
    mids = date2num([_dt((t + e) / 2) for t, e in zip(series["t"], edges)])
    images: dict[str, Image] = {}

    def finish(name: str, title: str, figure, axes) -> None:
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        axes.grid(True, alpha=0.3)
        axes.set_title(title)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        buffer = io.BytesIO()
        # A fixed date in the SVG metadata keeps identical input byte-identical.
        metadata = {"Date": None} if ext == "svg" else {"Software": None}
        figure.savefig(buffer, format=ext, dpi=100, metadata=metadata)
        plt.close(figure)
        images[name] = Image(title, ext, buffer.getvalue())

    if series["power_watts"]:
        figure, axes = plt.subplots(figsize=(9, 3.2))
        labels = list(series["power_watts"])
        axes.stackplot(mids, *[series["power_watts"][c] for c in labels],
                       labels=[c or "(none)" for c in labels], alpha=0.85, step=None)
        axes.set_ylabel("W (average per bucket)")
        finish("power", "Power by component", figure, axes)

    figure, axes = plt.subplots(figsize=(9, 3.2))
    # From 0 at --from to the totals' value at --to; grams until a kilogram is reached.
    ends = date2num([_dt(start)] + [_dt(e) for e in edges])
    lines = [("operational", series["cumulative_operational_grams"]),
             ("embodied", series.get("cumulative_embodied_grams") or [])]
    largest = max((abs(g) for _, values in lines for g in values), default=0.0)
    scale, unit = (1000.0, "kgCO2e") if largest >= 1000 else (1.0, "gCO2e")
    for label, values in lines:
        if values:
            axes.plot(ends, [0.0] + [g / scale for g in values], label=label)
    axes.set_xlim(date2num(_dt(start)), date2num(_dt(end)))
    axes.set_ylim(bottom=0)
    axes.set_ylabel(unit)
    finish("emissions", "Cumulative emissions", figure, axes)

    if series["intensity"]:
        figure, axes = plt.subplots(figsize=(9, 3.2))
        for line in series["intensity"]:
            axes.step(date2num([_dt(t) for t in line["t"]]), line["grams_per_kwh"], where="post",
                      label=line["label"])
        axes.set_ylabel("gCO2e/kWh")
        finish("intensity", "Grid carbon intensity", figure, axes)
    return images


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def _time(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
