"""The report's sections in the article's order, and the check of a user's choice of them.

Apart from the assembly and the page rendering, which both need the list, so neither imports the other for it.
"""

from __future__ import annotations

from ..options import OptionError

# The report's sections in the article's order: id, title, the question it answers.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("input", "What does the network see? Preprocessing, step by step"),
    ("kernel", "How does a kernel work? One output value by hand"),
    ("channels", "How do channels fuse into features?"),
    ("conv1", "What do the first kernels and their feature maps look like?"),
    ("bottleneck", "What does one bottleneck block do, step by step?"),
    ("shortcuts", "When channels change: shortcut option A or option B?"),
    ("stages", "How do features change from stage to stage?"),
    ("residual", "How much does each block change its input?"),
    ("gradflow", "Why do residual connections help? Gradient flow"),
    ("cost", "Where are the parameters and the FLOPs?"),
    ("deployed", "Where does the time go once deployed? Each layer on each engine"),
    ("cam", "What does it predict, and where does the evidence lie?"),
    ("conclusion", "Conclusion: kernels, channels and layers on this image"),
)
SECTION_IDS = tuple(sid for sid, _ in SECTIONS)


def check_sections(sections: tuple[str, ...] | None) -> tuple[str, ...]:
    """The chosen section ids in the article's order, or every section for None; unknown ids are the user's error."""
    if sections is None:
        return SECTION_IDS
    bad = [s for s in sections if s not in SECTION_IDS]
    if bad or not sections:
        raise OptionError("sections", ",".join(sections), f"unknown {', '.join(bad) or '(empty)'}; choose from {','.join(SECTION_IDS)}")
    return tuple(s for s in SECTION_IDS if s in sections)
