"""Rendering of the ablation report: Markdown, self-contained HTML and the PNG plots.

A report is a list of :class:`Section` (paragraphs, tables of already formatted strings,
plots written as PNG files); ``sections.py`` and ``decisions.py`` build them, this module only
draws and prints.
The HTML embeds every plot as a base64 ``data:`` URI and its CSS inline: it loads offline,
makes no network request and needs no JavaScript. Plots use matplotlib's object API with
the Agg canvas (no pyplot, so no global backend state is touched).
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vldistill.platform.report.stats import Interval


@dataclass
class Table:
    slug: str
    title: str
    frame: pd.DataFrame  # strings; a cell ending in " *" is an interval that excludes zero
    note: str = ""


@dataclass
class Section:
    slug: str
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png path)


# ---------------------------------------------------------------- cell formatting

def fnum(x, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fiv(iv: Interval) -> str:
    if iv.n == 0:
        return "—"
    if iv.n < 2:
        return f"{fnum(iv.mean)} (n=1)"
    return f"{fnum(iv.mean)} [{fnum(iv.lo)}, {fnum(iv.hi)}]"


def fdelta(delta: float, lo: float, hi: float, excludes_zero: bool) -> str:
    if not math.isfinite(delta):
        return "—"
    if not math.isfinite(lo):
        return f"{fnum(delta, sign=True)} (no interval)"
    return f"{fnum(delta, sign=True)} [{fnum(lo, sign=True)}, {fnum(hi, sign=True)}]" + \
        (" *" if excludes_zero else "")


def fcost(key: str, v) -> str:
    if v is None or not np.isfinite(v):
        return "—"
    return f"{v / 1e6:.2f}M" if key in ("student_params", "student_flops") else f"{v:.2f} ms"




# ---------------------------------------------------------------- markdown


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(none)_"
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(sections: list[Section], meta: dict, out: Path) -> str:
    """The report as Markdown; plots are linked relative to ``out`` (``plots/*.png``)."""
    lines = [f"# Ablation report: {meta['name']}", "",
             f"Sweep `{meta['sweep_dir']}` · objective {meta['objective']} · factors {meta['factors']}", ""]
    lines += [f"> note: {n}" for n in meta.get("notes", [])]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.text:
            lines += [p, ""]
        for t in s.tables:
            lines += [f"**{t.title}**", ""]
            if t.note:
                lines += [t.note, ""]
            lines += [md_table(t.frame), ""]
        for caption, path in s.plots:
            rel = path.relative_to(out) if path.is_relative_to(out) else path
            lines += [f"![{caption}]({rel.as_posix()})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- html

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1240px;
 color:#1d232a;background:#fff;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;border-bottom:2px solid #2b6cb0;padding-bottom:6px}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #d5dbe1;padding-bottom:4px}
h3{font-size:1.0em;margin:1.2em 0 .3em}
.meta{color:#4a5560}.note{color:#6b4e00;background:#fff7e0;padding:4px 8px}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.84em;margin:.3em 0 1em}
th,td{border:1px solid #d5dbe1;padding:3px 6px;text-align:left;white-space:nowrap}
th{background:#edf2f7}tr:nth-child(even) td{background:#f8fafc}
td.sig{font-weight:700;background:#fefcbf !important}
td:last-child{white-space:normal;min-width:9em}
figure{margin:.5em 0 1.5em}figure img{max-width:100%;border:1px solid #e2e8f0}
figcaption{font-size:.85em;color:#4a5560}code{background:#f1f5f9;padding:0 3px}
nav ul{columns:2;font-size:.92em;list-style:none;padding-left:0}
"""


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only markup the section texts use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{_inline(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = [f'<td class="sig">{_inline(str(v))}</td>' if str(v).endswith(" *")
                 else f"<td>{_inline(str(v))}</td>" for v in row]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="wrap"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def render_html(sections: list[Section], meta: dict) -> str:
    """A self-contained HTML page: inline CSS, plots as base64 PNG, no script, no remote URL."""
    parts = [f"<h1>Ablation report: {_inline(meta['name'])}</h1>",
             f"<p class=meta>Sweep <code>{html.escape(meta['sweep_dir'])}</code> · objective "
             f"{_inline(meta['objective'])} · factors {_inline(meta['factors'])}</p>"]
    parts += [f"<p class=note>note: {_inline(n)}</p>" for n in meta.get("notes", [])]
    parts.append("<nav><ul>" + "".join(f'<li><a href="#{s.slug}">{_inline(s.title)}</a></li>'
                                       for s in sections) + "</ul></nav>")
    for s in sections:
        parts.append(f'<h2 id="{s.slug}">{_inline(s.title)}</h2>')
        parts += [f"<p>{_inline(p)}</p>" for p in s.text]
        for t in s.tables:
            parts.append(f"<h3>{_inline(t.title)}</h3>")
            if t.note:
                parts.append(f"<p class=meta>{_inline(t.note)}</p>")
            parts.append(html_table(t.frame))
        for caption, path in s.plots:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_inline(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>Ablation report: {html.escape(meta['name'])}</title>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------- plots


def _figure(n: int, ncols: int = 2, w: float = 4.6, h: float = 3.2, left: float = 0.75,
            top: float = 0.45) -> tuple[Figure, list]:
    """A grid of ``n`` panels; fixed margins in inches (a layout engine costs 3x the drawing)."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width, height = w * ncols, h * nrows
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - 0.2 / width, bottom=0.55 / height,
                        top=1 - top / height, wspace=0.28, hspace=0.55 * 3.2 / h)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def plot_levels(path: Path, title: str, panels: list[tuple[str, pd.DataFrame]], baseline: str | None) -> None:
    """Mean per level with its 95% interval, one panel per metric; baseline in orange."""
    fig, axes = _figure(max(1, len(panels)))
    for ax, (metric, st) in zip(axes, panels):
        x = np.arange(len(st))
        err = np.vstack([st["mean"] - st["lo"], st["hi"] - st["mean"]]).astype(float)
        colors = ["#dd6b20" if lv == baseline else "#2b6cb0" for lv in st["level"]]
        for i in range(len(st)):
            ax.errorbar(x[i], st["mean"].iloc[i], yerr=np.nan_to_num(err[:, i:i + 1]), fmt="o",
                        color=colors[i], capsize=4)
        labels = [str(v) for v in st["level"]]
        tilt = len(st) > 3 or max(map(len, labels), default=0) > 12
        ax.set_xticks(x, labels, rotation=15 if tilt else 0, ha="right" if tilt else "center",
                      fontsize=8 if tilt else 9)
        ax.set_xlim(-0.5, len(st) - 0.5)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=.3)
    fig.suptitle(f"{title} (orange = baseline)", fontsize=11)
    _save(fig, path)


def plot_trend(path: Path, title: str, panels: list, log: bool) -> None:
    """Bin means against bin medians with a 95% band, trials as light dots."""
    fig, axes = _figure(max(1, len(panels)))
    for ax, (metric, xb, st, xs, ys) in zip(axes, panels):
        ax.scatter(xs, ys, s=10, color="#a0aec0", label="trials")
        ax.plot(xb, st["mean"], "o-", color="#2b6cb0", label="bin mean")
        ax.fill_between(np.asarray(xb, float), st["lo"].astype(float), st["hi"].astype(float),
                        color="#2b6cb0", alpha=.2, label="95% interval")
        if log:
            ax.set_xscale("log")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} (quantile bins)", fontsize=11)
    _save(fig, path)


def plot_pareto(path: Path, panels: list) -> None:
    """Configurations as dots, the Pareto front as a step line, one panel per (metric, cost)."""
    fig, axes = _figure(len(panels), top=0.2)
    for ax, (metric, cost, allc, front) in zip(axes, panels):
        scale, unit = (1e6, " (millions)") if cost in ("student_params", "student_flops") else (1, "")
        ax.scatter(allc[cost] / scale, allc[metric], s=18, color="#a0aec0")
        ax.step(front[cost] / scale, front[metric], where="post", color="#c53030", marker="o")
        for _, r in front.iterrows():
            ax.annotate(str(r["config"]), (r[cost] / scale, r[metric]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        ax.margins(x=0.12, y=0.1)
        ax.set_xlabel(cost + unit)
        ax.set_ylabel(metric)
        ax.grid(alpha=.3)
    _save(fig, path)


def plot_bars(path: Path, title: str, values: pd.Series) -> None:
    longest = max((len(str(i)) for i in values.index), default=8)
    fig, (ax,) = _figure(1, w=4.5 + 0.07 * longest, h=1.0 + 0.4 * max(2, len(values)),
                         left=0.3 + 0.07 * longest)
    ax.barh([str(i) for i in values.index][::-1], values.to_numpy(float)[::-1], color="#2b6cb0")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=.3, axis="x")
    _save(fig, path)


def plot_interaction(path: Path, df: pd.DataFrame, a: str, b: str, metric: str, a_name: str,
                     b_name: str, order_a: list[str], order_b: list[str]) -> None:
    """Cell means of ``metric``: levels of A on x, one line per level of B."""
    fig, (ax,) = _figure(1, w=6.0, h=3.6, top=0.2)
    cells = df.groupby([a, b])[metric].mean()
    xs = [lv for lv in order_a if lv in set(df[a])]
    for lb in [lv for lv in order_b if lv in set(df[b])]:
        ys = [cells.get((la, lb), np.nan) for la in xs]
        ax.plot(range(len(xs)), ys, "o-", label=f"{b_name}={lb}")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(a_name)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=.3)
    _save(fig, path)


def plot_scatter(path: Path, panels: list) -> None:
    fig, axes = _figure(len(panels), ncols=3, w=3.8, top=0.2)
    for ax, (xn, x, yn, y) in zip(axes, panels):
        ax.scatter(x, y, s=14, color="#2b6cb0")
        ax.set_xlabel(xn)
        ax.set_ylabel(yn)
        ax.grid(alpha=.3)
    _save(fig, path)
