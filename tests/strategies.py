"""Generated input for the readers' tests (hypothesis): JSON shaped like the records a reader knows, and valid
records with one value somewhere inside replaced or deleted."""

from __future__ import annotations

import copy

from hypothesis import strategies as st


def json_like(keys: list[str], words: list[str], max_size: int = 4, max_leaves: int = 25):
    """Arbitrary JSON whose keys and strings are often the reader's own (so it gets past the first checks)."""
    scalars = (st.none() | st.booleans() | st.integers(-2, 4) | st.floats() | st.sampled_from(words)
               | st.text(max_size=4))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(keys) | st.text(max_size=3), inner, max_size=max_size),
                        max_leaves=max_leaves)


@st.composite
def mutated(draw, valid: list, values):
    """A valid record with one value somewhere inside replaced by a drawn value, or deleted."""
    record = copy.deepcopy(draw(st.sampled_from(valid)))
    node = record
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        if isinstance(node[key], (dict, list)) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(values)
        return record
