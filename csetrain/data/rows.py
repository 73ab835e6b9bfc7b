"""Rows to records for `data=files`: the check that a value is text, the `data.on_bad_row`
policy (fail with `file:row: what — fix`, or drop and count), and each row's record
{role: stripped text} with its hard negatives counted against k."""

from __future__ import annotations

from csetrain.config import ConfigError
from csetrain.data.file_formats import Row, Table
from csetrain.data.hard_negatives import (
    column_list,
    count_problem,
    negative_record,
    negative_values,
)

POLICIES = ("fail", "drop")


def bad_value(value, column: str) -> tuple[str, str] | None:
    """What is wrong with a value where text is expected, and the fix; None if it is text."""
    if value is _MISSING:
        return f"no '{column}' value", "add it"
    if value is None:
        return f"'{column}' is null", "give it text"
    if not isinstance(value, str):
        kind = {bool: "boolean", int: "number", float: "number"}.get(
            type(value), type(value).__name__
        )
        return f"'{column}' is a {kind} ({str(value)[:40]}), not text", "give it text"
    if not value.strip():
        return f"'{column}' is empty", "fill it in"
    return None


_MISSING = object()


class BadRows:
    """The `data.on_bad_row` policy: fail on the first bad row, or drop and count them."""

    def __init__(self, policy: str):
        if policy not in POLICIES:
            raise ConfigError(f"data.on_bad_row={policy!r}: choose one of {list(POLICIES)}")
        self.policy, self.dropped, self.first = policy, 0, None

    def report(self, label: str, row: Row, problem: tuple[str, str]) -> None:
        what, fix = problem
        message = (
            f"{label}:{row.where}: {what} — {fix}, delete the row, or set data.on_bad_row=drop"
        )
        if self.policy == "fail":
            raise ConfigError(message)
        self.dropped += 1
        self.first = self.first or message


def parsed_rows(table: Table, mapping: dict, bad: BadRows) -> list[tuple[Row, dict]]:
    """The table's rows with their records {role: stripped text}, the hard negatives (if
    mapped) as a list under `hard_negative`: their count is checked once k is known. Bad rows
    go to the policy."""
    negatives = column_list(mapping.get("hard_negative"))
    texts = {role: column for role, column in mapping.items() if role != "hard_negative"}
    parsed = []
    for row in table.rows:
        found = negative_values(row.values, negatives, _MISSING)
        checks = [(c, row.values.get(c, _MISSING)) for c in texts.values()] + found
        problem = row.problem
        for column, value in checks:
            problem = problem or bad_value(value, column)
        if problem is None and negatives and not found:
            problem = f"'{negatives[0]}' is an empty list", "give it at least one hard negative"
        if problem is not None:
            bad.report(table.label, row, problem)
            continue
        record = {role: row.values[column].strip() for role, column in texts.items()}
        if negatives:
            record["hard_negative"] = [value.strip() for _, value in found]
        parsed.append((row, record))
    return parsed


def records_of(
    label: str, parsed: list[tuple[Row, dict]], count: int | None, given: bool, bad: BadRows
) -> list[dict[str, str]]:
    """The parsed rows as records, each row's hard negatives as `count` fields; a row with
    another number of them goes to the policy (`given`: k came from data.negatives)."""
    records = []
    for row, record in parsed:
        if "hard_negative" in record:
            texts = record.pop("hard_negative")
            if problem := count_problem(len(texts), count, given):
                bad.report(label, row, problem)
                continue
            record.update(negative_record(texts))
        records.append(record)
    return records
