"""The gradient-flow chart: ResNet-N against plain-N, both BatchNorm regimes, on log scales."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from ..tracing.gradflow import REGIMES, GradFlowResult, NetGrad
from ..units import times
from .canvas import new_figure, save_figure

COLOURS = {"resnet": "tab:blue", "plain": "tab:red"}


def _label(net: NetGrad, arch: str) -> str:
    depth = arch.replace("resnet", "")
    return f"ResNet-{depth}" if net.network == "resnet" else f"plain-{depth}"


def plot_gradflow(res: GradFlowResult, path: str | os.PathLike) -> Path:
    """Write :func:`gradflow_figure` to ``path`` (PNG, atomically); returns the path written."""
    return save_figure(gradflow_figure(res), path)


def gradflow_figure(res: GradFlowResult) -> Figure:
    """The gradient-flow figure.

    One row per BatchNorm regime. Left: gradient RMS per element at each stage
    boundary, input side on the left. Right: the norm of each conv weight's gradient
    in forward order (main path only, so ResNet and plain line up). Solid lines are
    the first measurement; dashed ones, if any, come after ``options.steps`` SGD steps.
    """
    regimes = list(res.init)
    fig = new_figure(11, 3.6 * len(regimes))
    axes = fig.subplots(len(regimes), 2, squeeze=False)
    arch = res.options.arch
    phases = [("init", "-", "")]
    if res.trained is not None:
        phases.append(("trained", "--", f" after {res.options.steps} steps"))
    for row, regime in enumerate(regimes):
        ax_b, ax_c = axes[row]
        for phase, style, suffix in phases:
            for net in res.phase(phase)[regime].values():
                names = [b["name"] for b in net.boundaries]
                ax_b.plot(range(len(names)), [b["rms"] for b in net.boundaries], style, marker="o",
                          color=COLOURS[net.network], label=_label(net, arch) + suffix)
                convs = [c for c in net.convs if "downsample" not in c["name"]]
                ax_c.plot(range(1, len(convs) + 1), [c["norm"] for c in convs], style, color=COLOURS[net.network],
                          label=_label(net, arch) + suffix, linewidth=1.2)
            ax_b.set_xticks(range(len(names)), names, rotation=25, fontsize=7)
        r, p = res.init[regime]["resnet"], res.init[regime]["plain"]
        first = r.boundaries[1]["name"]
        ratio = p.rms(first) / r.rms(first)
        how = times(ratio)
        ax_b.set_title(f"{REGIMES[regime]}\nstage-boundary gradient RMS (plain/ResNet at {first}: {how})", fontsize=9)
        ax_b.set_yscale("log")
        ax_b.set_ylabel("RMS of dL/d(activation)")
        ax_b.legend(fontsize=7)
        ax_c.set_title(f"{REGIMES[regime]}\nconv weight gradient norm, input side first", fontsize=9)
        ax_c.set_yscale("log")
        ax_c.set_xlabel("conv index on the main path")
        ax_c.set_ylabel("||dL/dW||")
        ax_c.legend(fontsize=7)
    o = res.options
    fig.suptitle(f"{arch} vs plain, batch {o.batch_size} of {o.input_size}x{o.input_size}, "
                 f"weights {o.weights}, seed {o.seed}", fontsize=10)
    return fig
