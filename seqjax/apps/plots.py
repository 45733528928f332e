"""Pictures of what a recurrent network does; needs matplotlib (``pip install matplotlib``).

Every function writes a PNG and returns its path; nothing here is imported by the core.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from seqjax import _checks

__all__ = [
    "plot_forecasts",
    "plot_gradient_flow",
    "plot_hidden_states",
    "plot_jacobian_spectrum",
]


def _matplotlib():
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "seqjax.apps.plots needs matplotlib: pip install matplotlib (or seqjax[plot])"
        ) from err
    return matplotlib


@contextlib.contextmanager
def _figure(*args, figsize=None, **kwargs):
    """``(fig, axes)`` of a new off-screen figure (``plt.subplots``' arguments).

    A ``matplotlib.figure.Figure`` of its own, not pyplot's: drawing a file neither switches
    the caller's backend (a notebook keeps its inline plots) nor adds to pyplot's figures.
    """
    fig = _matplotlib().figure.Figure(figsize=figsize)
    yield fig, fig.subplots(*args, **kwargs)


def _save(fig, path: str | os.PathLike, **options) -> str:
    """Write ``fig`` to a temporary file beside ``path``, then rename it there: a failed
    write leaves a file already at ``path`` as it was."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=f".{name}.", suffix=os.path.splitext(name)[1], dir=folder
    )
    os.close(fd)
    try:
        fig.savefig(temporary, dpi=120, **options)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def plot_gradient_flow(
    norms: Mapping[str, Sequence[float]], path: str | os.PathLike, *, title: str = ""
) -> str:
    """Plot ``||dL/dh_t||`` against the distance from the loss, one line per model (log scale).

    Args:
        norms: ``{label: [T] norms}`` (e.g. :func:`seqjax.diagnostics.gradient_norms` of a
            loss on the last step, averaged over the batch); each is normalised by its value
            at the last step, so the lines show how fast the gradient decays or grows.
        path: where to write the PNG.
    """
    curves = {label: np.asarray(values, np.float64) for label, values in norms.items()}
    for label, values in curves.items():
        if values.ndim != 1 or not values.size:
            raise ValueError(
                f"plot_gradient_flow: norms[{label!r}] must be a non-empty [T] sequence; got "
                f"shape {values.shape}"
            )
    with _figure(figsize=(7, 4.2)) as (fig, ax):
        for label, values in curves.items():
            distance = np.arange(len(values))[::-1]
            ax.semilogy(distance, values / max(values[-1], 1e-300), label=label, linewidth=1.8)
        ax.set_xlabel("distance from the loss (steps back in time)")
        ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ relative to the last step")
        ax.set_title(title or "Gradient flow through time")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        return _save(fig, path)


def _char_label(c: str) -> str:
    return "\u2423" if c == " " else repr(c)[1:-1]  # open box for a space, \\n for a newline


def plot_hidden_states(
    states: np.ndarray,
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    units: int | Sequence[int] = 32,
    unit_labels: Sequence[str] | None = None,
    wrap: int | None = None,
    vmax: float | None = None,
    title: str = "",
) -> str:
    """Heatmap of hidden units (rows) over time steps (columns), as in char-RNN pictures.

    Args:
        states: ``[T, H]`` hidden states of one sequence.
        path: where to write the PNG.
        labels: one label per step (e.g. the characters read), shown under the columns;
            a space is drawn as an open box, a newline as ``\\n``.
        units: show the first this many units, or the units with these indices, in order.
        unit_labels: one row label per unit shown (default: the unit's index).
        wrap: at most this many steps per panel; longer sequences continue in panels below,
            like lines of text (default: one panel).
        vmax: the colour scale runs over ``[-vmax, vmax]``; default 1 for states inside
            ``[-1, 1]`` (tanh units), else the largest absolute value shown.
        title: the figure's title.
    """
    where = "plot_hidden_states"
    states = np.asarray(states, np.float64)
    if states.ndim != 2 or not states.size:
        raise ValueError(f"{where}: states must be [T, H] with T, H >= 1; got shape {states.shape}")
    if _checks.is_int(units):
        index = np.arange(min(_checks.positive_int("units", units, where), states.shape[1]))
    else:
        index = np.asarray(units)
        if index.ndim != 1 or not index.size or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(
                f"{where}: units must be a positive int or unit indices; got {units!r}"
            )
        if index.min() < -states.shape[1] or index.max() >= states.shape[1]:
            raise ValueError(
                f"{where}: units must index the H = {states.shape[1]} units; got {units!r}"
            )
    if wrap is not None:
        wrap = _checks.positive_int("wrap", wrap, where)
    states = states[:, index]
    if unit_labels is None:
        unit_labels = [str(i) for i in index]
    if len(unit_labels) != len(index):
        raise ValueError(
            f"plot_hidden_states: unit_labels must hold one label per unit shown "
            f"({len(index)}); got {len(unit_labels)}"
        )
    if labels is not None and len(labels) != len(states):
        raise ValueError(
            f"plot_hidden_states: labels must hold one label per step ({len(states)}); "
            f"got {len(labels)}"
        )
    largest = float(np.abs(states).max())
    vmax = vmax or (1.0 if largest <= 1.0 else largest)
    steps = len(states)
    wrap = steps if not wrap else min(wrap, steps)
    panels = max(1, -(-steps // wrap))
    row_height = 0.12 if len(index) > 16 else 0.22
    width = max(6.0, 0.16 * wrap + 1.5 + 0.06 * max(len(u) for u in unit_labels))
    panel_height = row_height * len(index) + 0.5
    with _figure(panels, 1, figsize=(width, panel_height * panels + 1.3), squeeze=False) as (
        fig,
        axes,
    ):
        for p, ax in enumerate(axes[:, 0]):
            lo, hi = p * wrap, min((p + 1) * wrap, steps)
            image = ax.imshow(
                states[lo:hi].T,
                aspect="auto",
                cmap="RdBu_r",
                vmin=-vmax,
                vmax=vmax,
                interpolation="nearest",
                extent=(lo - 0.5, hi - 0.5, len(index) - 0.5, -0.5),  # a last, shorter panel too
            )
            ax.set_xlim(lo - 0.5, lo + wrap - 0.5)
            ax.set_yticks(range(len(index)))
            ax.set_yticklabels(unit_labels, fontsize=7 if len(index) > 16 else 8)
            if labels is not None:
                ax.set_xticks(range(lo, hi))
                ax.set_xticklabels(
                    [_char_label(c) for c in labels[lo:hi]], fontsize=8, family="monospace"
                )
                ax.tick_params(axis="x", length=0, pad=2)
            ax.set_ylabel("hidden unit")
        axes[-1, 0].set_xlabel("input read at each step" if labels is not None else "time step")
        axes[0, 0].set_title(title or "Hidden-state activity")
        fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="activation")
        return _save(fig, path, bbox_inches="tight")


def _off_scale(
    reference: np.ndarray, curves: Mapping[str, np.ndarray], reach: float
) -> tuple[tuple[float, float], dict[str, str]]:
    """Y limits that keep ``reference`` readable, and a note per curve they cut off.

    A curve that stays within ``reach`` times the reference's range of it is drawn whole;
    one that leaves that band (a diverged model) or holds NaN is cut off at the limits,
    and its note says how far it went, for the legend.
    """
    lo, hi = float(np.nanmin(reference)), float(np.nanmax(reference))
    span = max(hi - lo, 1e-12)
    band = (lo - reach * span, hi + reach * span)
    notes = {}
    for label, values in curves.items():
        finite = values[np.isfinite(values)]
        if finite.size < values.size:
            notes[label] = "diverged: NaN/Inf, off the scale"
        elif finite.size and (finite.min() < band[0] or finite.max() > band[1]):
            far = finite.min() if band[0] - finite.min() > finite.max() - band[1] else finite.max()
            notes[label] = f"diverged: off the scale, reaches {far:.3g}"
            continue
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    margin = 0.05 * max(hi - lo, 1e-12)
    return (lo - margin, hi + margin), notes


def plot_forecasts(
    truth: Sequence[float],
    forecasts: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    context: Sequence[float] | None = None,
    start: int = 0,
    errors: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    xlabel: str = "time step",
    ylabel: str = "value",
) -> str:
    """Closed-loop forecasts against the truth, with an optional panel of error vs horizon.

    The y axes stay readable when a model diverges: a forecast that leaves the band of the
    truth and context widened by their range on each side is cut off at the axis, and its
    legend entry says so and how far it went; the error panel is scaled to the models that
    did not diverge, and the others' errors are cut off likewise.

    Args:
        truth: ``[H]`` the true values after the forecast origin.
        forecasts: ``{label: [H]}`` each model's predictions of them.
        path: where to write the PNG.
        context: ``[C]`` observed values before the origin, drawn in grey.
        start: the time index of the origin (the first forecast step), for the x axis.
        errors: ``{label: [H]}`` an error (e.g. NRMSE over many origins) per step ahead;
            drawn in a second panel when given.
        title, xlabel, ylabel: text of the first panel.
    """
    colours = _matplotlib().rcParams["axes.prop_cycle"].by_key()["color"]
    true = np.asarray(truth, np.float64)
    predicted = {label: np.asarray(v, np.float64) for label, v in forecasts.items()}
    reference = true if context is None else np.concatenate([true, np.asarray(context)])
    limits, notes = _off_scale(reference, predicted, reach=1.0)
    panels = 2 if errors else 1
    with _figure(
        1,
        panels,
        figsize=(7.5 + 4.5 * (panels - 1), 5.2),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.6, 1][:panels]},
    ) as (fig, axes):
        ax = axes[0, 0]
        ahead = start + np.arange(len(true))
        if context is not None:
            observed = np.asarray(context, np.float64)
            ax.plot(
                start - len(observed) + np.arange(len(observed)),
                observed,
                color="0.6",
                linewidth=1.5,
                label="context (observed)",
            )
        ax.plot(ahead, true, color="black", linewidth=3.2, alpha=0.8, label="truth")
        for k, (label, values) in enumerate(predicted.items()):
            ax.plot(
                ahead,
                values,
                linewidth=1.4,
                label=label + (f" ({notes[label]})" if label in notes else ""),
                color=colours[k % len(colours)],
                linestyle="--" if k % 2 else "-",
            )
        ax.set_ylim(*limits)
        ax.axvline(start - 0.5, color="0.3", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title or "Closed-loop forecasts", fontsize=10)
        ax.grid(True, alpha=0.3)
        # Below the axes: in the plot, a legend hides the curves it names.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
        if errors:
            ax = axes[0, 1]
            error_curves = {label: np.asarray(v, np.float64) for label, v in errors.items()}
            kept = [v[np.isfinite(v)] for label, v in error_curves.items() if label not in notes]
            kept = [v for v in kept if v.size] or [v[np.isfinite(v)] for v in error_curves.values()]
            top = 1.15 * max([1e-12] + [float(v.max()) for v in kept if v.size])
            for k, (label, values) in enumerate(error_curves.items()):
                finite = values[np.isfinite(values)]
                note = ""
                if finite.size < values.size:
                    note = " (NaN/Inf: off the scale)"
                elif finite.size and finite.max() > top:
                    note = f" (off the scale, reaches {finite.max():.3g})"
                ax.plot(
                    np.arange(1, len(values) + 1),
                    values,
                    linewidth=1.4,
                    label=label + note,
                    color=colours[k % len(colours)],
                    linestyle="--" if k % 2 else "-",
                )
            ax.set_ylim(0, top)
            ax.set_xlabel("steps ahead")
            ax.set_ylabel("NRMSE over all origins")
            ax.set_title("Error against horizon", fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
        fig.tight_layout()
        return _save(fig, path)


def plot_jacobian_spectrum(
    summaries: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> str:
    """Spectra of the recurrent Jacobian along a trajectory, one colour per model.

    Three panels: the spectral radius of ``J_t = dh_t / dh_{t-1}`` at each step; its largest
    and its median singular value (log scale, clipped at 1e-3); and the norm of the product
    ``dh_T / dh_t`` against the distance ``T - t`` (log scale, clipped at 1e-30), the factor
    a gradient from the last step is scaled by on its way back.

    Args:
        summaries: ``{label: summary}`` with each summary from
            :func:`seqjax.diagnostics.jacobian_summary` (keys ``singular_values`` ``[T, S]``,
            ``spectral_radius`` ``[T]``, ``product_norm`` ``[T]``).
        path: where to write the PNG.
        title: the figure's title.
    """
    colours = _matplotlib().rcParams["axes.prop_cycle"].by_key()["color"]
    with _figure(1, 3, figsize=(14, 4.2)) as (fig, axes):
        for k, (label, summary) in enumerate(summaries.items()):
            colour = colours[k % len(colours)]
            radius = np.asarray(summary["spectral_radius"], np.float64)
            singular = np.asarray(summary["singular_values"], np.float64)
            product = np.asarray(summary["product_norm"], np.float64)
            steps = np.arange(len(radius))
            axes[0].plot(steps, radius, color=colour, linewidth=1.4, label=label)
            # Dead or saturated units give singular values of 0 (to rounding): clipped at 1e-3.
            top, median = singular[:, 0], np.median(singular, axis=1)
            axes[1].semilogy(steps, np.maximum(top, 1e-3), color=colour, linewidth=1.4, label=label)
            axes[1].semilogy(steps, np.maximum(median, 1e-3), color=colour, linewidth=1.1, ls="--")
            distance = len(product) - 1 - steps
            # float32 products underflow to 0 within tens of steps for contracting cells.
            axes[2].semilogy(
                distance, np.maximum(product, 1e-30), color=colour, linewidth=1.4, label=label
            )
        axes[0].axhline(1.0, color="0.3", linestyle=":", linewidth=1)
        axes[0].set_ylabel(r"spectral radius of $J_t = \partial h_t / \partial h_{t-1}$")
        axes[1].axhline(1.0, color="0.3", linestyle=":", linewidth=1)
        axes[1].set_ylabel(r"singular values of $J_t$ (clipped at $10^{-3}$)")
        axes[1].set_title("solid: largest, dashed: median", fontsize=9)
        for ax in axes[:2]:
            ax.set_xlabel("time step t")
        axes[2].set_xlabel("distance T - t (steps back from the last state)")
        axes[2].set_ylabel(r"$\|\partial h_T / \partial h_t\|_2$ (clipped at $10^{-30}$)")
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(title or "Recurrent Jacobian along a trajectory")
        fig.tight_layout()
        return _save(fig, path)
