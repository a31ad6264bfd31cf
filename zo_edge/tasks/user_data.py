"""Your own classification data: a CSV (with a header) or JSONL file, one labelled example per row.

    task = get_task("user-data", path="reviews.csv", text_fields=["review"], label_field="stars",
                    template="Review: {review} Sentiment:", labels="1=terrible,5=great|excellent")
    data = task.load(seed=0, k=None)      # whole file: fixed test split, dev carved from the rest

Omitted ``template``: "{field}\\nLabel:" (several fields: one "name: {name}" line each). Omitted ``labels``: the label
values themselves are the words, classes sorted. ``text_fields`` defaults to the fields the template names, else
["text"]. Every problem is one error line naming the file and line; ``skip_bad_rows=True`` drops malformed rows
(counted in ``bad_rows`` and warned) instead of aborting. Exact duplicate texts are kept once.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from zo_edge.tasks.base import (
    Example,
    Prompt,
    Task,
    TaskError,
    Verbalizer,
    chatml,
    dedup,
    register_task,
    template_fields,
)

__all__ = ["UserData", "default_template", "read_rows"]

_SHOWN = 3  # bad rows quoted in an error message; the rest are counted


def default_template(text_fields: list[str]) -> str:
    if len(text_fields) == 1:
        return "{" + text_fields[0] + "}\nLabel:"
    return "".join(f"{f}: {{{f}}}\n" for f in text_fields) + "Label:"


def _cell(value, what: str) -> str:
    if value is None:
        raise ValueError(f"{what} is missing")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} is {type(value).__name__}, expected text or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} is {value}, expected text or a finite number")
    s = str(value).strip()
    if not s:
        raise ValueError(f"{what} is empty")
    if "\x00" in s:  # a NUL byte: a binary or corrupted file, not text
        raise ValueError(f"{what} holds a NUL byte")
    return s


def read_rows(path: Path, text_fields: list[str], label_field: str, skip_bad_rows: bool):
    """(examples, bad) from a .csv or .jsonl file; ``bad`` lists "line N: why" for rows that could not be used."""
    fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json", ".ndjson"):
        raise TaskError(f"{path}: unknown extension {path.suffix!r}; name the file .csv or .jsonl")
    if not path.is_file():
        raise TaskError(f"{path} does not exist: check the data path")
    wanted = [*text_fields, label_field]
    rows: list[Example] = []
    bad: list[str] = []

    def take(lineno: int, record) -> None:
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, got {type(record).__name__}")
            fields = {f: _cell(record.get(f), f"field {f!r}") for f in text_fields}
            rows.append(Example(fields, _cell(record.get(label_field), f"label {label_field!r}")))
        except ValueError as e:
            bad.append(f"line {lineno}: {e}")

    try:
        _read(path, fmt, take, bad, skip_bad_rows, wanted)
    except UnicodeDecodeError as e:
        raise TaskError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from None
    return rows, bad


def _read(path: Path, fmt: str, take, bad: list[str], skip_bad_rows: bool, wanted: list[str]) -> None:
    """Feed every record of the file to ``take`` (malformed lines go to ``bad``)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if fmt == "jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.append(f"line {lineno}: not JSON ({e.msg})")
                    continue
                take(lineno, record)
        else:
            reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",", strict=True)
            try:
                header = next(reader)
            except StopIteration:
                raise TaskError(f"{path} is empty: it needs a header row and data rows") from None
            missing = [c for c in wanted if c not in header]
            if missing:
                raise TaskError(f"{path} has columns {header}; missing {missing}: fix text_fields/label_field")
            start = reader.line_num + 1
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    bad.append(f"line {start}: malformed CSV ({e})")
                    if not skip_bad_rows:
                        break  # the reader's position is unreliable after a parse error
                    start = reader.line_num + 1
                    continue
                if cells and any(c.strip() for c in cells):
                    if len(cells) != len(header):
                        bad.append(f"line {start}: {len(cells)} cells, header has {len(header)}")
                    else:
                        take(start, dict(zip(header, cells, strict=True)))
                start = reader.line_num + 1


@register_task("user-data")
@dataclass
class UserData(Task):
    """A task over a user file; construction reads and validates the whole file (errors surface immediately)."""

    name: str = "user-data"
    template: str = ""
    verbalizer: dict[str, list[str]] = field(default_factory=dict)
    text_fields: list[str] = field(default_factory=list)
    test_size: int = 0  # 0: min(1000, a fifth of the rows)
    path: str = ""
    label_field: str = "label"
    labels: str = ""  # "neg=terrible,pos=great|good"; empty: the label values are the words
    skip_bad_rows: bool = False
    bad_rows: int = field(default=0, init=False)
    duplicates: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.path:
            raise TaskError("user-data needs path=<file.csv|file.jsonl>")
        if isinstance(self.text_fields, str):
            self.text_fields = [f.strip() for f in self.text_fields.split(",") if f.strip()]
        if not self.text_fields:
            self.text_fields = (template_fields(self.template) if self.template else []) or ["text"]
        if not self.template:
            self.template = default_template(self.text_fields)
        named = template_fields(self.template)
        extra = [f for f in named if f not in self.text_fields]
        if extra:
            raise TaskError(
                f"template {self.template!r} names {extra}, not in text_fields {self.text_fields}: add them"
            )
        if not named:
            raise TaskError(
                f"template {self.template!r} uses no field: add a placeholder like {{{self.text_fields[0]}}}"
            )
        path = Path(self.path)
        rows, bad = read_rows(path, self.text_fields, self.label_field, self.skip_bad_rows)
        if bad and not self.skip_bad_rows:
            more = f" (+{len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
            shown = "; ".join(bad[:_SHOWN])
            raise TaskError(f"{path}: {len(bad)} bad row(s): {shown}{more}; fix them or pass skip_bad_rows=True")
        if bad:
            warnings.warn(f"{path}: skipped {len(bad)} bad row(s), first {bad[0]}", stacklevel=2)
        self.bad_rows = len(bad)
        if not rows:
            raise TaskError(f"{path} has no usable rows: the dataset is empty")
        self._rows, self.duplicates = dedup(rows)
        if self.labels:
            self.verbalizer = Verbalizer.parse(self.labels, self.template).words
        elif not self.verbalizer:
            self.verbalizer = Verbalizer.from_values([e.label for e in self._rows], self.template).words
        unknown = sorted({e.label for e in self._rows} - set(self.verbalizer))
        if unknown:
            raise TaskError(
                f"{path}: label value(s) {unknown} not in the verbalizer {list(self.verbalizer)}: add them to labels"
            )
        if len({e.label for e in self._rows}) < 2:
            raise TaskError(f"{path}: all rows have label {self._rows[0].label!r}; give two or more classes")
        if not self.test_size:
            self.test_size = max(1, min(1000, len(self._rows) // 5))
        super().__post_init__()

    def prompt_candidates(self) -> list[Prompt]:
        """The file's template first, then generic alternatives over the same fields and label words: a
        "Category:" cue and the ChatML chat form that names the classes (for instruct models)."""
        fields = self.text_fields
        body = "{" + fields[0] + "}" if len(fields) == 1 else "\n".join(f"{f}: {{{f}}}" for f in fields)
        words = {c: list(ws) for c, ws in self.verbalizer.items()}
        bare = {c: [w.strip() for w in ws] for c, ws in words.items()}
        names = [ws[0] for ws in bare.values()]
        ask = f"Classify this text as {', '.join(names[:-1])} or {names[-1]}. Answer with one word."
        return [
            *super().prompt_candidates(),
            Prompt("category", body + "\nCategory:", words),
            Prompt("chat", chatml(ask, body), bare),
        ]

    def load_examples(self) -> list[Example]:
        return list(self._rows)
