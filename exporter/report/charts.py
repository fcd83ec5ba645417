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
    mids = date2num([_dt(t + width / 2) for t in series["t"]])  # the numbers the date axis uses
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
    ends = date2num([_dt(t + width) for t in series["t"]])
    axes.plot(ends, [g / 1000 for g in series["cumulative_operational_grams"]],
              label="operational")
    if series.get("cumulative_embodied_grams"):
        axes.plot(ends, [g / 1000 for g in series["cumulative_embodied_grams"]],
                  label="embodied")
    axes.set_ylabel("kgCO2e")
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
