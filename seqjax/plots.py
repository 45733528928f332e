"""Pictures of what a recurrent network does; needs matplotlib (``pip install matplotlib``).

Every function writes a PNG and returns its path; nothing here is imported by the core.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "seqjax.plots needs matplotlib: pip install matplotlib (or seqjax[plot])"
        ) from err
    return plt


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in norms.items():
        values = np.asarray(values, np.float64)
        distance = np.arange(len(values))[::-1]
        ax.semilogy(distance, values / max(values[-1], 1e-300), label=label, linewidth=1.8)
    ax.set_xlabel("distance from the loss (steps back in time)")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ relative to the last step")
    ax.set_title(title or "Gradient flow through time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


def plot_hidden_states(
    states: np.ndarray,
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    units: int = 32,
    title: str = "",
) -> str:
    """Heatmap of hidden units (rows) over time steps (columns), as in char-RNN pictures.

    Args:
        states: ``[T, H]`` hidden states of one sequence.
        path: where to write the PNG.
        labels: one label per step (e.g. the characters read), shown under the columns.
        units: show the first this many units.
    """
    plt = _pyplot()
    states = np.asarray(states, np.float64)[:, :units]
    width, height = max(6.0, 0.25 * len(states)), 0.12 * states.shape[1] + 1.8
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(states.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_ylabel("hidden unit")
    ax.set_xlabel("time step")
    if labels is not None:
        ax.set_xticks(range(len(labels)))
        shown = ["\u2423" if c == " " else repr(c)[1:-1] for c in labels]  # open box for space
        ax.set_xticklabels(shown, fontsize=7, family="monospace")
    ax.set_title(title or "Hidden-state activity")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)
