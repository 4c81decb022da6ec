"""CSV cells that a spreadsheet shows as text: every CSV odin-pl writes passes its rows through :func:`safe_row`.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel, LibreOffice
and Google Sheets (``+SUM(1,2).png``, an OOD folder named ``=1+1``); OWASP's rule for CSV injection is to prefix
such a cell with a single quote, which shows it as the text it is. Only text cells are touched (a negative score
stays a number). A file name that is not valid UTF-8 (Python's surrogate escapes) is written with its raw bytes
as ``\\xNN`` escapes, so that the UTF-8 CSV can always be written. CSV cells are for reading: the exact names and
paths stay in the JSON outputs (``results.json``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` unchanged unless it is text: then with undecodable bytes as ``\\xNN`` and a leading ``'`` when it
    starts like a formula (:data:`FORMULA_STARTS`)."""
    if not isinstance(value, str):
        return value
    try:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def safe_row(row: Mapping[str, Any] | Iterable[Any]) -> dict[str, Any] | list[Any]:
    """A row (a dict for ``csv.DictWriter``, else a sequence) with every cell through :func:`safe_cell`."""
    if isinstance(row, Mapping):
        return {key: safe_cell(value) for key, value in row.items()}
    return [safe_cell(value) for value in row]
