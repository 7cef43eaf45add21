"""Show what "low-contribution channels" means before pruning: importance per group and what would go.

Nothing is pruned: the scores come from the same DepGraph groups and criterion the
loop uses, and the dropped set is the one Torch-Pruning would remove at the ratio.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic import write_json
from ..errors import XrayError
from ..options import OptionError, at_least, option
from ..units import table
from .importance import (
    DESCRIPTIONS,
    accumulate_gradients,
    check_criterion,
    copy_gradients,
)
from .figures import plot_importance
from .structured import make_pruner


@dataclass
class AnalyzeOptions:
    importance: str = option("l1", "the criterion to show")
    ratio: float = option(0.3, "with --analyze-only: share of channels to show as dropped")
    global_pruning: bool = option(False, "rank across groups (one threshold) instead of within each")
    round_to: int = option(8, "as in the loop: remaining widths stay multiples of this")
    taylor_batches: int = option(8, "batches whose gradients feed the taylor criterion")
    out: str | None = option(None, "folder for importance.json and importance.png")

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise OptionError("ratio", self.ratio, "must lie strictly between 0 and 1 (share of channels dropped)")
        at_least("round_to", self.round_to, 1)
        at_least("taylor_batches", self.taylor_batches, 1)


@dataclass
class GroupImportance:
    name: str  # the group's root layer: the conv whose output channels the group is about
    members: list[str]  # every layer whose channels are tied to the root's (residual coupling included)
    channels: int
    scores: list[float]  # one per channel, normalised by the group's mean as the pruner ranks them
    dropped: list[int]  # channel indices the criterion would remove at the ratio

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyze_importance(model: nn.Module, options: AnalyzeOptions, data: Any = None) -> list[GroupImportance]:
    """Score every prunable channel group of ``model`` and mark those that would be dropped.

    Args:
        model: the model (left untouched).
        options: criterion, ratio, ranking scope.
        data: a DataBundle (``train`` gives the taylor criterion its gradients).

    Returns:
        one entry per DepGraph group, in network order.
    """
    check_criterion(options.importance, data is not None)
    work = copy.deepcopy(model).eval()
    if options.importance == "taylor":
        accumulate_gradients(model, data.train, options.taylor_batches)
        copy_gradients(model, work)
        model.zero_grad(set_to_none=True)
    names = {m: n for n, m in work.named_modules()}
    pruner = make_pruner(work, options.importance, options.ratio, global_pruning=options.global_pruning, round_to=options.round_to)
    found: dict[nn.Module, GroupImportance] = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        root = group[0].dep.target.module
        imp = pruner.estimate_importance(group)
        if imp is None:
            continue
        members = []
        for dep, _ in group:
            n = names.get(dep.target.module)
            if n is not None and n not in members and isinstance(dep.target.module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                members.append(n)
        found[root] = GroupImportance(names[root], members, len(imp), [float(v) for v in imp], [])
    for group in pruner.step(interactive=True):
        root = group[0].dep.target.module
        if root in found:
            found[root].dropped = sorted(int(i) for i in group[0].idxs)
    order = {n: i for i, (n, _) in enumerate(work.named_modules())}
    return sorted(found.values(), key=lambda g: order[g.name])


def importance_text(groups: list[GroupImportance], options: AnalyzeOptions, max_listed: int = 12) -> str:
    """The per-group distribution and the channels that would go, as a table."""
    rows = []
    for g in groups:
        s = sorted(g.scores)
        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        shown = ",".join(map(str, g.dropped[:max_listed])) + (f",... (+{len(g.dropped) - max_listed})" if len(g.dropped) > max_listed else "")
        rows.append([
            g.name,
            len(g.members),
            g.channels,
            f"{s[0]:.3g}",
            f"{q[0]:.3g}",
            f"{q[1]:.3g}",
            f"{q[2]:.3g}",
            f"{s[-1]:.3g}",
            len(g.dropped),
            shown or "-",
        ])
    total = sum(g.channels for g in groups)
    dropped = sum(len(g.dropped) for g in groups)
    scope = "one threshold across all groups" if options.global_pruning else "the lowest in each group"
    head = (
        f"criterion {options.importance}: {DESCRIPTIONS[options.importance]}; scores normalised by each group's mean\n"
        f"at ratio {options.ratio} ({scope}, widths rounded to multiples of {options.round_to}): "
        f"{dropped} of {total} channels in {len(groups)} groups would be dropped\n"
    )
    return head + table(["group (root layer)", "layers", "channels", "min", "p25", "median", "p75", "max", "dropped", "dropped channels"], rows)


def write_importance(groups: list[GroupImportance], options: AnalyzeOptions, arch: str) -> tuple[Path, Path]:
    """``importance.json`` and ``importance.png`` in ``options.out``."""
    out = Path(options.out or ".")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XrayError(f"--out {out}: cannot create ({e.strerror})") from None
    js = out / "importance.json"
    write_json(js, {"arch": arch, "options": asdict(options), "groups": [g.to_dict() for g in groups]}, indent=1)
    scope = "global" if options.global_pruning else "per group"
    png = plot_importance(groups, out / "importance.png", title=f"{arch}: {options.importance} importance, ratio {options.ratio} ({scope})")
    return js, png
