"""Several hard negatives per row: the columns that hold them, how many (k) a corpus has, and
the fields they become.

A corpus with k = 1 keeps the one field `hard_negative` (what every k = 1 corpus always had,
so its records, tokenization cache and batches are unchanged); with k > 1 its fields are
`hard_negative_1 .. hard_negative_k`, each an ordinary field of the field-major Batch, so
collation, GradCache's chunks and packing handle them like any other view. Objectives and
miners ask for the *role* `hard_negative`; `role_fields` turns it into the corpus's fields.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

ROLE = "hard_negative"


def negative_fields(count: int) -> tuple[str, ...]:
    """The fields of `count` hard negatives a row: ('hard_negative',) or hard_negative_1..k."""
    return (ROLE,) if count == 1 else tuple(f"{ROLE}_{j}" for j in range(1, count + 1))


def role_fields(role: str, fields: Sequence[str]) -> tuple[str, ...]:
    """The fields among `fields` that carry `role`: the role itself, or its numbered fields
    (`hard_negative_1`, ...) in number order. Empty when the corpus lacks the role."""
    if role in fields:
        return (role,)
    pattern = re.compile(re.escape(role) + r"_(\d+)")
    numbered = [(int(m.group(1)), f) for f in fields if (m := pattern.fullmatch(f))]
    return tuple(f for _, f in sorted(numbered))


def expand_roles(roles: Sequence[str], fields: Sequence[str]) -> tuple[str, ...]:
    """The data fields behind `roles` (a role the corpus lacks stays as it is: the augmentation
    or a check names it)."""
    return tuple(f for role in roles for f in (role_fields(role, fields) or (role,)))


def numbered_columns(base: str, by_lower: dict[str, str]) -> list[str]:
    """The table's columns `base_1, base_2, ...` (sentence-transformers' n-tuple layout,
    `negative_1 .. negative_k`), consecutive from 1, matched case-insensitively."""
    found = []
    while (column := by_lower.get(f"{base}_{len(found) + 1}".lower())) is not None:
        found.append(column)
    return found


def column_list(value) -> list[str]:
    """A mapping value as its list of columns: one name (a number names a headerless column by
    position), or a list of names (a YAML list)."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [str(value)]
    return [str(v) for v in value]


def negative_values(values: dict, columns: list[str], missing) -> list[tuple[str, object]]:
    """(label, value) of every hard negative of a row: a column holding text gives one, a column
    holding a list gives one per item (labelled `column[i]`), in column order. A missing column
    gives one (column, `missing`) for the caller's checks."""
    found = []
    for column in columns:
        value = values.get(column, missing)
        if isinstance(value, (list, tuple)):
            found += [(f"{column}[{i}]", item) for i, item in enumerate(value)]
        else:
            found.append((column, value))
    return found


def common_count(counts: list[int]) -> int | None:
    """The number of hard negatives most rows have (the first seen on a tie); None if no rows."""
    return Counter(counts).most_common(1)[0][0] if counts else None


def count_problem(count: int, expected: int, given: bool) -> tuple[str, str] | None:
    """What is wrong with a row holding `count` hard negatives where `expected` are wanted."""
    if count == expected:
        return None
    why = "data.negatives asks for" if given else "most rows have"
    return (
        f"{count} hard negatives, {why} {expected}",
        f"give it exactly {expected} (or set data.negatives={count} if that is the right k)",
    )


def negative_record(texts: list[str]) -> dict[str, str]:
    """A row's hard negatives as record fields (see `negative_fields`)."""
    return dict(zip(negative_fields(len(texts)), texts))
