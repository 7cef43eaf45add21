"""Layer names a user may pass to ``--layer``, and the one-line error that suggests the nearest ones."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..errors import XrayError


def resolve_layer(name: str, valid: Sequence[str], *, flag: str = "--layer", what: str = "layer") -> str:
    """Return ``name`` if it is one of ``valid``, else raise an XrayError naming the closest ones.

    Args:
        name: what the user typed.
        valid: the accepted names, in model order.
        flag: the command-line flag, for the message.
        what: the kind of name expected (``layer``, ``conv layer``...), for the message.

    Returns:
        ``name`` unchanged.
    """
    if name in valid:
        return name
    near = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.4)
    if not near:  # nothing similar: show where the list starts so the user sees the naming scheme
        near = list(valid[:3]) + (["..."] if len(valid) > 4 else []) + list(valid[-1:])
    raise XrayError(
        f"{flag} {name!r}: no such {what}; nearest: {', '.join(near)} "
        f"({len(valid)} valid names; `resnet-xray anatomy` lists them all)"
    )
