"""Tests for the user-data task: CSV/JSONL reading, defaults, bad rows with line numbers, one-line errors.

python -m pytest tests/zo_edge/test_user_data.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from zo_edge.batching import lm_batch
from zo_edge.tasks import Example, TaskError, get_task
from zo_edge.tasks.user_data import UserData


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def one_line_error(fn, *fragments):
    with pytest.raises(TaskError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


CSV = 'text,label,extra\n"fine film",pos,1\n"dull, slow",neg,2\n"a ""quoted"" one",pos,3\n"dull, slow",neg,4\n'


def test_csv_with_template_and_labels_spec(tmp_path):
    p = write(tmp_path, "d.csv", CSV)
    task = get_task(
        "user-data", path=str(p), template="Review: {text} Sentiment:", labels="neg=terrible,pos=great|good"
    )
    assert isinstance(task, UserData)
    assert task.classes == ["neg", "pos"]
    assert task.verbalizer == {"neg": [" terrible"], "pos": [" great", " good"]}
    rows = task.load_examples()
    assert [e.fields["text"] for e in rows] == ["fine film", "dull, slow", 'a "quoted" one'] and task.duplicates == 1
    assert task.render(rows[1]) == "Review: dull, slow Sentiment:"
    assert task.text_fields == ["text"], "text_fields defaults to the fields the template names"


def test_defaults_without_template_or_labels(tmp_path):
    p = write(tmp_path, "d.csv", CSV)
    task = get_task("user-data", path=str(p))
    assert task.template == "{text}\nLabel:"
    assert task.verbalizer == {"neg": [" neg"], "pos": [" pos"]}
    two = get_task("user-data", path=str(p), text_fields="text,extra")
    assert two.template == "text: {text}\nextra: {extra}\nLabel:"
    assert two.render(two.load_examples()[0]) == "text: fine film\nextra: 1\nLabel:"
    nl = get_task("user-data", path=str(p), template="{text}\n", labels="neg=bad,pos=good")
    assert nl.verbalizer == {"neg": ["bad"], "pos": ["good"]}, "no extra space after a template ending in whitespace"


def test_jsonl_numbers_and_multiple_fields(tmp_path):
    rows = [
        {"q": "What?", "ctx": "c1", "y": 0},
        {"q": "Who?", "ctx": "c2", "y": 1},
        {"q": "Why?", "ctx": "c3", "y": 1},
    ]
    p = write(tmp_path, "d.jsonl", jsonl(rows) + "\n")
    task = get_task("user-data", path=str(p), template="{ctx} Q: {q} A:", label_field="y", labels="0=no,1=yes")
    assert task.text_fields == ["ctx", "q"]
    exs = task.load_examples()
    assert exs[0] == Example({"ctx": "c1", "q": "What?"}, "0")
    assert task.render(exs[1]) == "c2 Q: Who? A:"


def test_bad_jsonl_rows_report_line_numbers(tmp_path):
    good = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(6)]
    lines = [good[0], good[1], "{not json", good[2], {"text": "x"}, good[3], '["a list"]', good[4], good[5]]
    p = write(tmp_path, "d.jsonl", jsonl(lines))
    one_line_error(
        lambda: get_task("user-data", path=str(p)), "3 bad row(s)", "line 3", "line 5", "line 7", "skip_bad_rows"
    )
    with pytest.warns(UserWarning, match="skipped 3 bad row"):
        task = get_task("user-data", path=str(p), skip_bad_rows=True)
    assert task.bad_rows == 3 and len(task.load_examples()) == 6


def test_bad_csv_rows_report_physical_line_numbers(tmp_path):
    # line 2 holds a quoted field spanning lines 2-3, so the row with a missing cell is on line 4, the empty label on 6
    text = 'text,label\n"two\nlines",a\nonly-one-cell\nok,b\nempty label,\nfine,a\n'
    p = write(tmp_path, "d.csv", text)
    one_line_error(lambda: get_task("user-data", path=str(p)), "2 bad row(s)", "line 4: 1 cells", "line 6", "empty")
    with pytest.warns(UserWarning):
        task = get_task("user-data", path=str(p), skip_bad_rows=True)
    assert task.bad_rows == 2
    assert [e.fields["text"] for e in task.load_examples()] == ["two\nlines", "ok", "fine"]


def test_malformed_csv_quote(tmp_path):
    p = write(tmp_path, "d.csv", 'text,label\nok,a\n"bad"x,b\nfine,b\n')
    one_line_error(lambda: get_task("user-data", path=str(p)), "line 3", "malformed CSV")


def test_errors_say_what_to_fix(tmp_path):
    p = write(tmp_path, "d.csv", CSV)
    one_line_error(lambda: get_task("user-data", path=str(p), labels="neg=terrible,neu=meh"), "['pos']", "add them")
    one_line_error(lambda: get_task("user-data", path=str(p), template="{review} It was"), "missing ['review']")
    one_line_error(
        lambda: get_task("user-data", path=str(p), text_fields=["text"], template="{text} {extra}:"), "['extra']"
    )
    one_line_error(lambda: get_task("user-data", path=str(p), template="no field:"), "uses no field")
    one_line_error(lambda: get_task("user-data", path=str(p), labels="neg=terrible"), "at least two")
    one_line_error(lambda: get_task("user-data", path=str(p), labels="neg,pos=great"), "class=word")
    one_line_error(lambda: get_task("user-data", path=str(p), label_field="stars"), "missing ['stars']")
    one_line_error(lambda: get_task("user-data", path=str(tmp_path / "nope.csv")), "does not exist")
    one_line_error(lambda: get_task("user-data", path=str(write(tmp_path, "d.txt", "x"))), ".jsonl")
    one_line_error(lambda: get_task("user-data"), "path=")
    one_line_error(lambda: get_task("user-data", path=str(write(tmp_path, "h.csv", "text,label\n"))), "empty")
    one_line_error(lambda: get_task("user-data", path=str(write(tmp_path, "e.csv", ""))), "empty")
    one_line_error(lambda: get_task("user-data", path=str(write(tmp_path, "e.jsonl", "\n\n"))), "empty")
    one_line_error(
        lambda: get_task("user-data", path=str(write(tmp_path, "one.csv", "text,label\na,x\nb,x\n"))), "two or more"
    )


def test_user_data_end_to_end(tmp_path, tiny_tok):
    rows = [{"text": "a" if i % 2 else "b", "label": "neg" if i % 2 else "pos", "id": str(i)} for i in range(40)]
    p = write(tmp_path, "d.jsonl", jsonl(rows))
    task = get_task(
        "user-data", path=str(p), text_fields=["text", "id"], template="{text} It was", labels="neg=bad,pos=good"
    )
    assert task.test_size == 8  # a fifth of 40
    d = task.load(seed=0, k=None)
    assert len(d.test) == 8 and len(d.train) + len(d.dev) == 32
    d2 = task.load(seed=0, k=4)
    assert len(d2.train) == 8 and len(d2.dev) == 8
    f = lm_batch(tiny_tok, d2.train[:2], task, max_len=16)
    gold = [9 if e.label == "pos" else 8 for e in d2.train[:2]]
    np.testing.assert_array_equal(f["input_ids"][:, -1], gold)
