"""The subgroup attributes every image carries from the metadata into the cache index.

    ATTRIBUTE_COLUMNS   # ("age", "sex", "view", "follow_up")
    count_unknown(table)  # {"age": 3, "sex": 0, ...}

Kept apart from cxr14.data.metadata (which parses them) so that the stages reading the cache
depend on these few lines only, not on the metadata reader: a change to the reader re-runs
preprocess, not every training.
"""

from __future__ import annotations

import pandas as pd

ATTRIBUTE_COLUMNS = ("age", "sex", "view", "follow_up")  # table columns, and extra columns of the cache index
UNKNOWN = "unknown"  # a sex or view that is missing or not what NIH writes; age/follow_up: an empty cell


def count_unknown(table: pd.DataFrame) -> dict[str, int]:
    """attribute -> rows of `table` (with ATTRIBUTE_COLUMNS) where it is unknown."""
    return {
        name: int(table[name].isna().sum() if name in ("age", "follow_up") else (table[name] == UNKNOWN).sum())
        for name in ATTRIBUTE_COLUMNS
    }
