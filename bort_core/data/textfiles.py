"""Task files read as text: UTF-8 lines and JSON-lines rows, every error naming the file and line."""
from __future__ import annotations

import json
from typing import Iterator, Tuple


def read_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, text) of a UTF-8 file, line ends and a leading byte-order mark removed;
    a byte that is not UTF-8 names the file and line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError("%s:%d: not UTF-8 text (byte 0x%02x at column %d); task files "
                                 "are UTF-8: re-encode it, e.g. iconv -f latin1 -t utf-8"
                                 % (path, lineno, raw[err.start], err.start + 1)) from None
            yield lineno, line.lstrip("\ufeff") if lineno == 1 else line


class JsonRow(dict):
    """A parsed JSON line that knows where it came from, for error messages."""

    def __init__(self, data: dict, path: str, lineno: int):
        super().__init__(data)
        self.where = "%s:%d" % (path, lineno)

    def need(self, key: str):
        if key not in self:
            raise ValueError("%s: missing field %r" % (self.where, key))
        return self[key]


def jsonl_rows(path: str) -> Iterator[JsonRow]:
    """`JsonRow`s of a .jsonl file (blank lines skipped)."""
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as err:
            raise ValueError("%s:%d: not a JSON object: %s" % (path, lineno, err)) from None
        if not isinstance(data, dict):
            raise ValueError("%s:%d: not a JSON object" % (path, lineno))
        yield JsonRow(data, path, lineno)
