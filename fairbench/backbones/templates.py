"""Item text x_i rendered from the items table with a format template, e.g. ``"{title}. Genres: {genres}"``.

Values are prepared per column before formatting: list-like cells (genres) are joined with ", ", missing
values (None/NaN) become "", and integral floats (a ``year`` column read as float) print without ".0".
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fairbench.errors import UserError

DEFAULT_TEMPLATE = "{title}"


def template_fields(template: str) -> list[str]:
    """Column names a template refers to: ``{genres}``, ``{title!r}``, ``{year:d}`` -> genres, title, year."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise UserError(f"backbone.template={template!r} is not a valid format string: {error}.") from error
    fields = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        base = field_name.split(".", 1)[0].split("[", 1)[0]
        if base == "" or base.isdigit():
            raise UserError(
                f"backbone.template={template!r} uses a positional placeholder '{{{field_name}}}'; "
                "name a column instead, e.g. '{title}'."
            )
        if base not in fields:
            fields.append(base)
    return fields


def _cell_text(value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return ""  # pandas' nullable columns (year as Int64) hold pd.NA
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return value


def render_item_texts(items: pd.DataFrame, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One text per item row (in row order): ``template.format(**row)`` over the columns it names."""
    fields = template_fields(template)
    missing = [name for name in fields if name not in items.columns]
    if missing:
        available = ", ".join(map(str, items.columns))
        raise UserError(
            f"backbone.template={template!r} uses unknown placeholder(s) {missing}; "
            f"available item columns: {available}."
        )
    columns: list[Sequence[Any]] = [[_cell_text(v) for v in items[name].tolist()] for name in fields]
    rows = zip(*columns, strict=True) if fields else ([] for _ in range(len(items)))
    try:
        return [template.format_map(dict(zip(fields, row, strict=True))) for row in rows]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise UserError(
            f"backbone.template={template!r} cannot be rendered for the items table: {error}."
        ) from error
