"""TrainConfig: TOML file -> dataclass -> CLI flags override (names mirror the keys) -> checked once, here.

    zo-edge train --config my.toml --steps 200        # flags win over the file

The resolved config is written to ``RUN/config.json`` and into every checkpoint's meta.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zo_edge.data import OBJECTIVES

__all__ = ["DEFAULTS_BY_METHOD", "ConfigError", "TrainConfig"]


class ConfigError(ValueError):
    pass


#: per-method defaults where the methods differ (lr, mu, optimizer), tuned on SmolLM2-135M + Rotten Tomatoes
DEFAULTS_BY_METHOD: dict[str, dict[str, Any]] = {
    "mezo": {"lr": 1e-5, "mu": 1e-3, "optimizer": "sgd"},
    "lozo": {"lr": 1e-5, "mu": 1e-3, "optimizer": "sgd", "rank": 2},
    "subzero": {"lr": 1e-5, "mu": 1e-3, "optimizer": "sgd", "rank": 2},
    "agzo": {"lr": 1e-4, "mu": 1e-3, "optimizer": "sgd", "rank": 1},
    "zo-act": {"lr": 2e-3, "mu": 1e-2, "optimizer": "adam", "rank": 8},
    "zoop": {"lr": 1e-4, "mu": 1e-3, "optimizer": "sgd"},
}


@dataclass
class TrainConfig:
    model: str = ""  # an exported model folder (zo-edge export)
    task: str = "rotten-tomatoes"
    method: str = "zo-act"
    steps: int = 200
    out: str = "runs/run"
    seed: int = 0
    lr: float | None = None  # None: the method's default
    mu: float | None = None
    rank: int | None = None
    queries: int = 1
    optimizer: str | None = None  # sgd | adam
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | linear | cosine
    warmup: int = 0
    objective: str = "lm"  # lm | classification
    batch_size: int = 16
    max_len: int = 64
    k: int = 16  # examples per class for train (MeZO's k-shot); 0 = the whole pool
    dev_k: int = 16
    eval_examples: int = 500  # held-out test examples scored (0 = all)
    eval_every: int = 0
    save_every: int = 50
    normalize: bool = False  # length-normalised candidate scores
    provider: str = "cpu"
    threads: int = 0  # 0: onnxruntime's default (all cores)
    micro_batch: int = 0  # rows per onnxruntime pass for loss forwards (0: the whole batch); caps activation memory
    # user data (task = user-data)
    data: str = ""
    text_field: list[str] = dataclasses.field(default_factory=list)
    label_field: str = "label"
    template: str = ""
    labels: str = ""
    skip_bad_rows: bool = False
    # method-specific knobs (None: the method's own default)
    nu: int | None = None
    refresh: int | None = None
    calib_batches: int | None = None
    select: str | None = None
    subset: int | None = None
    dist: str | None = None  # mezo: gaussian | rademacher

    def __post_init__(self) -> None:
        from zo_edge.methods import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(sorted(METHODS))}")
        for key, value in DEFAULTS_BY_METHOD.get(self.method, {}).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.micro_batch < 0:
            raise ConfigError(f"--micro-batch must be >= 0 (0: whole batch per pass), got {self.micro_batch}")
        if self.max_len < 8:
            raise ConfigError(f"--max-len must be >= 8 tokens, got {self.max_len}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.method == "zoop" and self.objective != "lm":
            raise ConfigError("zoop needs per-row losses: use --objective lm")
        if self.task == "user-data" and not self.data:
            raise ConfigError("--task user-data needs --data FILE.csv|FILE.jsonl")

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, toml_path: str | None, overrides: dict[str, Any]) -> TrainConfig:
        """File values, then every override that is not None (the CLI passes None for flags not given)."""
        values: dict[str, Any] = {}
        if toml_path:
            path = Path(toml_path)
            if not path.is_file():
                raise ConfigError(f"config file {path} not found")
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: invalid TOML ({e})") from None
            unknown = sorted(set(data) - set(cls.keys()))
            if unknown:
                raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys mirror the flags of `zo-edge train`")
            values.update(data)
        values.update({k: v for k, v in overrides.items() if v is not None and k in cls.keys()})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def method_config(self):
        """The method's own Config, from the shared keys that it declares."""
        from zo_edge.methods import get_method

        cls = get_method(self.method).Config
        names = {f.name for f in fields(cls)}
        keys = ("mu", "rank", "queries", "nu", "refresh", "select", "subset", "dist", "calib_batches")
        kw = {k: getattr(self, k) for k in keys if k in names}
        return cls(**{k: v for k, v in kw.items() if v is not None})
