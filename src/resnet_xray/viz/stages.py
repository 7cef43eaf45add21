"""One sheet, one row per stage (stem, layer1 ... layer4): edges, then textures, then parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from ..dissect import LayerRow
from ..options import option, within
from .canvas import new_figure
from .features import FEATURE_CMAP
from .maps import pick_channels


@dataclass
class StagesOptions:
    channels: int = option(8, "channels per row")

    def __post_init__(self) -> None:
        # Every ResNet's stem has 64 channels: more would leave its row blank, and 475 a row took 170 s to draw.
        within("channels", self.channels, 1, 64)


@dataclass
class StageOutput:
    stage: str  # stem, layer1 ... layer4
    layer: str  # the traced name whose output ends the stage (maxpool, layer1.2.relu_2, ...)
    shape: tuple[int, ...]


def stage_outputs(rows: list[LayerRow]) -> list[StageOutput]:
    """The last operation of the stem (before layer1) and of each residual stage, from the anatomy."""
    out: list[StageOutput] = []
    stem = None
    for r in rows:
        head = r.name.split(".")[0]
        if head.startswith("layer") and head[5:].isdigit():
            if stem is not None:
                out.append(stem)
                stem = None
            if out and out[-1].stage == head:
                out[-1] = StageOutput(head, r.name, r.output_shape)
            else:
                out.append(StageOutput(head, r.name, r.output_shape))
        elif not out and len(r.output_shape) == 3:
            stem = StageOutput("stem", r.name, r.output_shape)
    return out


def stages_figure(rgb: np.ndarray, stages: list[StageOutput], maps: dict[str, torch.Tensor], options: StagesOptions | None = None) -> Figure:
    """The input in the first column, then the most active channels of each stage's output.

    Each tile is scaled to its own range: the sheet compares patterns, not magnitudes.
    """
    opts = options or StagesOptions()
    n = opts.channels
    width, height = 1.25 * (n + 1) + 0.6, 1.45 * len(stages) + 0.6
    fig = new_figure(width, height, layout=None)
    # fixed margins: room for the three-line row labels on the left and the title on top
    fig.subplots_adjust(left=1.05 / width, right=1 - 0.1 / width, bottom=0.15 / height, top=1 - 0.45 / height,
                        wspace=0.08, hspace=0.25)
    axes = fig.subplots(len(stages), n + 1, squeeze=False)
    for row, st in zip(axes, stages):
        fmap = maps[st.layer]
        chans = pick_channels(fmap, "top", n)
        row[0].imshow(rgb)
        shape = "x".join(map(str, st.shape))
        row[0].set_ylabel(f"{st.stage}\n{st.layer}\n{shape}", fontsize=7, rotation=0, ha="right", va="center")
        for ax, ch in zip(row[1:], chans):
            tile = fmap[ch].detach().float().cpu().numpy()
            ax.imshow(tile, cmap=FEATURE_CMAP, interpolation="nearest")
            ax.set_title(f"ch {ch}", fontsize=6, pad=1)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(chans):]:
            ax.set_frame_on(False)
    fig.suptitle(f"Stage by stage: the {n} most active channels of each stage's output (each tile on its own colour scale)", fontsize=9)
    return fig
