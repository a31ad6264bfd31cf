"""Configs of the commands: TOML file -> dataclass -> CLI flags override (names mirror the keys) -> checked once, here.

    zo-edge train --config my.toml --steps 200        # flags win over the file

A training config nests the method's own ``Config`` (``[method]`` table) and the optimizer (``[optim]`` table)::

    model = "artifacts/smollm2-fp32"
    steps = 200
    [method]
    name = "lozo"          # or, without knobs, a top-level  method = "lozo"
    nu = 20                # LOZO's own knob: defaults live in LOZOConfig, nowhere else
    [optim]
    lr = 1e-5              # absent: the method's ``default_lr``

Defaults exist once: in these dataclasses, in each method's ``Config`` and in the method's ``default_lr`` /
``default_optimizer`` declarations. A registered method therefore needs no row here (nor in ``cli.py``): its
``Config`` fields become ``[method]`` keys and ``--flags`` with the help text of their ``metadata["help"]``. Every
rule that spans fields is checked in ``__post_init__`` and fails with one ``ConfigError`` line naming the flag and
the fix. The resolved config (defaults filled in) is written to ``RUN/config.json`` and into every checkpoint's meta;
``TrainConfig.from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.errors import ZoEdgeError

__all__ = [
    "ConfigError",
    "DemoConfig",
    "EvalConfig",
    "FieldSpec",
    "OptimConfig",
    "ScoringConfig",
    "TrainConfig",
    "field_specs",
    "method_knobs",
    "registered_methods",
]


class ConfigError(ZoEdgeError):
    """A flag or config-file value that is missing, of the wrong type, out of range, or contradicts another."""


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text (the CLI's flag help; ``default`` is appended there, not written here)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# --- field introspection (shared with the CLI) -----------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """One config field as the CLI and the type checks see it: ``kind`` is bool | int | float | str | list."""

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    meta: dict[str, Any]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _kind_of(tp: Any) -> tuple[type, bool]:
    """(base type, accepts None) of an annotation such as ``int``, ``float | None``, ``list[str]``."""
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else Any
    if typing.get_origin(tp) is list:
        return list, optional
    return (tp if isinstance(tp, type) else object), optional


def field_specs(cls: type, skip: tuple[str, ...] = ()) -> list[FieldSpec]:
    """The scalar/list fields of a config dataclass (nested configs and ``skip`` excluded), types resolved."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, optional = _kind_of(hints[f.name])
        if dataclasses.is_dataclass(kind):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(FieldSpec(f.name, kind, optional, default, f.metadata.get("help", ""), dict(f.metadata)))
    return out


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list of strings"}


def _checked(spec: FieldSpec, value: Any, where: str) -> Any:
    """``value`` if it has the field's type (an int is a valid float; a string a one-item list), else one line."""
    if value is None and spec.optional:
        return None
    k = spec.kind
    ok = (
        (k is bool and isinstance(value, bool))
        or (k is int and isinstance(value, int) and not isinstance(value, bool))
        or (k is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (k is str and isinstance(value, str))
        or (
            k is list
            and (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)))
        )
        or k not in _KIND_NAMES
    )
    if not ok:
        raise ConfigError(
            f"{where}{spec.name} must be {_KIND_NAMES[k]}, got {value!r} ({type(value).__name__}) (flag {spec.flag})"
        )
    if k is float:
        return float(value)
    if k is list and isinstance(value, str):
        return [value]
    return value


def _check_types(obj: Any, where: str = "") -> None:
    """Type-check (and normalise: int -> float, str -> [str]) every field of a config dataclass instance in place."""
    for spec in field_specs(type(obj)):
        setattr(obj, spec.name, _checked(spec, getattr(obj, spec.name), where))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _finite_positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


# --- methods: their knobs, derived from the registry --------------------------------------------------------------
def registered_methods() -> dict[str, type]:
    """name -> method class, every method in zo_edge/methods registered (the one list of methods there is)."""
    import zo_edge.methods  # noqa: F401  (registers the methods)
    from runtime.method import METHODS

    return METHODS


def method_knobs() -> dict[str, list[tuple[str, FieldSpec]]]:
    """knob name -> [(method, its field)] over every registered method's Config: what ``--flags`` they make."""
    out: dict[str, list[tuple[str, FieldSpec]]] = {}
    for name, cls in sorted(registered_methods().items()):
        for spec in field_specs(cls.Config):
            out.setdefault(spec.name, []).append((name, spec))
    return out


def _method_config(method: str, cls: type, knobs: dict[str, Any], where: str = "") -> Any:
    """The method's Config from the knobs given (their types checked before its own __post_init__ runs)."""
    specs = {s.name: s for s in field_specs(cls.Config)}
    unknown = sorted(set(knobs) - set(specs))
    if unknown:
        flags = ", ".join(specs[n].flag for n in specs) or "none"
        raise ConfigError(
            f"{where}{', '.join('--' + u.replace('_', '-') for u in unknown)}: not a setting of method {method} "
            f"(its settings: {flags})"
        )
    values = {k: _checked(specs[k], v, where) for k, v in knobs.items()}
    for k, v in values.items():
        if specs[k].kind is float and v is not None:
            _require(math.isfinite(v), f"{where}{specs[k].flag} must be finite, got {v!r}")
        if specs[k].kind is int and v is not None:
            cap = _KNOB_CAPS.get(k, MAX_COUNT)
            _require(v <= cap, f"{where}{specs[k].flag} must be <= {cap}, got {v}")
    # the method's Config checks its own ranges (one line, MethodError) in its __post_init__
    return cls.Config(**values)


#: Upper bounds no real run comes near, so that a typo (an extra 000) fails in one line instead of allocating
#: rank x d_in per layer (a MemoryError deep in numpy) or overflowing an int64 seed or position.
MAX_COUNT = 2**31 - 1  # any count, period or size flag
MAX_SEED = 2**63 - 1
MAX_LEN = 2**16  # tokens per sequence
_KNOB_CAPS = {"rank": 4096, "queries": 4096, "oversample": 4096, "calib_batches": 100_000, "calib_rounds": 1000}

#: ``--template auto``: choose among the task's candidate prompts on the dev split (zo_edge.prompts)
AUTO = "auto"


# --- shared sections ----------------------------------------------------------------------------------------------
@dataclass
class DataFields:
    """Which task and examples, and how prompts are scored: shared by ``train`` and ``eval``."""

    task: str = _f("", "task name (default: user-data when --data is given, else rotten-tomatoes)", choices="tasks")
    data: str = _f("", "your CSV/JSONL file; implies --task user-data")
    text_field: list[str] = _f([], "text column(s) of --data the template uses (repeatable; default: text)")
    label_field: str = _f("label", "label column of --data")
    template: str = _f(
        "",
        "prompt template naming columns, e.g. 'Review: {text} Sentiment:', or 'auto': the best of the task's "
        "candidate prompts on the dev split (default: the task's own)",
    )
    labels: str = _f("", "verbalizer class=word[|word], e.g. 'neg=terrible,pos=great' (default: the task's own)")
    bos: bool = _f(
        True,
        "prepend the tokenizer's BOS token to each prompt (--no-bos: the template's tokens only; --template auto "
        "tries each candidate both ways where the tokenizer has one)",
    )
    skip_bad_rows: bool = _f(False, "skip malformed rows of --data (counted) instead of refusing the file")
    max_len: int = _f(
        0,
        "max tokens per sequence, prompts cut from the left (0: auto, the 98th percentile of the train + dev "
        "prompts' token lengths at the chosen prompt, at most 256; the cut count is printed)",
    )
    length_normalize: bool = _f(False, "score candidates by per-token log-likelihood (not the sum)")

    def _check_data(self) -> None:
        from zo_edge.tasks import list_tasks

        if not self.task:
            self.task = "user-data" if self.data else "rotten-tomatoes"
        _require(self.task in list_tasks(), f"unknown task {self.task!r}: known tasks are {', '.join(list_tasks())}")
        if self.task == "user-data":
            _require(bool(self.data), "--task user-data needs --data FILE.csv|FILE.jsonl")
        else:
            _require(not self.data, f"--data is for --task user-data, not {self.task}: drop --task or --data")
            for name, given in (
                ("--text-field", self.text_field),
                ("--label-field", self.label_field != "label"),
                ("--skip-bad-rows", self.skip_bad_rows),
            ):
                _require(not given, f"{name} applies to --data (task user-data), not to --task {self.task}")
        _require(
            self.max_len == 0 or 8 <= self.max_len <= MAX_LEN,
            f"--max-len must be 0 (auto) or 8..{MAX_LEN} tokens, got {self.max_len}",
        )
        _require(  # a built-in task's candidate prompts bring their own words; a file's candidates use --labels
            not (self.template == AUTO and self.labels and self.task != "user-data"),
            "--template auto picks a prompt with its own label words: drop --labels (or give --template too)",
        )
        if self.labels:
            words = [w.strip() for part in self.labels.split(",") for w in part.partition("=")[2].split("|")]
            words = [w for w in words if w]
            same = sorted({w for w in words if words.count(w) > 1})
            _require(not same, f"--labels {self.labels!r}: {', '.join(same)} used twice; one word per class")
        if self.task != "user-data" and (self.template or self.labels):
            self.make_task()  # a built-in task is cheap to build (no data read): check the override's classes now

    def make_task(self):
        """The task, with the data file and any template/labels override (``--template auto`` is resolved later,
        on the dev split, by ``zo_edge.prompts.select_prompt``: the task's own prompt stands until then)."""
        from zo_edge.tasks import get_task

        template = "" if self.template == AUTO else self.template
        if self.task == "user-data":
            return get_task(
                "user-data",
                path=self.data,
                text_fields=self.text_field,
                label_field=self.label_field,
                labels=self.labels,
                skip_bad_rows=self.skip_bad_rows,
                **({"template": template} if template else {}),
            ).with_bos(self.bos)
        task = get_task(self.task)
        if template or self.labels:
            task = task.with_prompt(template or None, self.labels or None)
        return task.with_bos(self.bos)


@dataclass
class SessionFields:
    """Where the graph runs: shared by ``train`` and ``eval``."""

    provider: str = _f("cpu", "execution provider: cpu, cuda, openvino, qnn, dml, coreml, cann or a full ORT name")
    provider_option: list[str] = _f(
        [], "an execution-provider option [PROVIDER:]KEY=VALUE (repeatable; PROVIDER defaults to --provider)"
    )
    threads: int = _f(0, "intra-op threads (0: onnxruntime's default, all cores)")
    micro_batch: int = _f(
        0, "rows per onnxruntime pass for loss forwards (0: the whole batch); caps activation memory"
    )

    def _check_session(self, providers: list[str]) -> None:
        """``providers``: the ones this command runs on (an option naming any other is refused, not ignored)."""
        _require(0 <= self.threads <= 4096, f"--threads must be in 0..4096 (0: all cores), got {self.threads}")
        _require(
            0 <= self.micro_batch <= MAX_COUNT, f"--micro-batch must be >= 0 (0: whole batch), got {self.micro_batch}"
        )
        self.provider_options(providers)

    def provider_options(self, providers: list[str]) -> dict[str, dict[str, str]]:
        """``--provider-option`` as {provider: {key: value}} (``runtime.providers.parse_provider_options``: a spec
        without ``PROVIDER:`` belongs to the first of ``providers``); what ``GraphSession`` takes."""
        from runtime.providers import parse_provider_options

        return parse_provider_options(self.provider_option, providers)


# --- train ------------------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """The optimizer section (``[optim]``): the step the optimizer takes along the method's direction."""

    optimizer: str | None = _f(None, "optimizer: sgd | adam | adamw", method_default="default_optimizer")
    lr: float | None = _f(None, "peak learning rate", method_default="default_lr")
    momentum: float = _f(0.0, "SGD momentum in [0, 1) (methods that take optimizer state only)")
    weight_decay: float = _f(0.0, "decoupled weight decay >= 0 (methods that take optimizer state only)")
    schedule: str = _f("constant", "learning-rate schedule: constant | linear | cosine")
    warmup: int = _f(0, "linear warm-up steps of the schedule (0..--steps)")

    def __post_init__(self) -> None:
        _check_types(self)


_NESTED = ("method_config", "optim")


@dataclass
class TrainConfig(DataFields, SessionFields):
    """``zo-edge train``: the run, its data, the method (nested Config) and the optimizer (nested OptimConfig)."""

    model: str = _f("", "exported model folder (zo-edge export MODEL --out DIR); required")
    recipe: str = _f(
        "",
        "a measured recipe as the base of every other setting: head (MeZO on the final norm behind the cached "
        "stack, what the demo runs) | every-block (ZO-Act on every block) | auto (head where the export allows) | "
        "none (the method's own defaults); flags given override its values (default: auto in zo-edge train "
        "unless --method or a TOML method is given, else none)",
    )
    method: str = _f("zo-act", "ZO method", choices="methods")
    steps: int = _f(200, "training steps")
    out: str = _f("runs/run", "run folder (config.json, checkpoints, metrics.jsonl, loss.png)")
    seed: int = _f(0, "run seed (data order, perturbations)")
    objective: str = _f("lm", "lm (LM loss on the label tokens) | classification (CE over the candidates)")
    batch_size: int = _f(16, "examples per step")
    k: int = _f(16, "training examples per class (k-shot); 0: the whole pool")
    dev_k: int = _f(16, "dev examples per class (best-checkpoint selection)")
    eval_examples: int = _f(
        500,
        "held-out test examples scored before and after training, into RUN/test.json (0: all)",
    )
    eval_every: int = _f(0, "dev evaluation every N steps (0: at the end only)")
    pick: str = _f(
        "best",
        "which dev evaluation becomes the run's best checkpoint: best (the highest dev score) | one-se (the latest "
        "within one standard error of the highest: less chasing of a small dev split's noise; the head recipe's)",
    )
    save_every: int = _f(50, "checkpoint every N steps")
    layers: str = _f(
        "all",
        "transformer blocks trained: all | top:N | bottom:N | ranges/lists like 0-3,10 | head (the final norm only, "
        "every block a cached prefix; with blocks: top:2,head)",
    )
    balance: str = _f(
        "auto", "class-balanced training batches: auto (when the classes differ 1.5x or more) | on | off"
    )
    #: the method's own Config: an instance, a dict of its knobs, or None (its defaults); an instance after init
    method_config: Any = field(default=None, metadata={"help": "the [method] table"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "the [optim] table"})

    def __post_init__(self) -> None:
        from zo_edge.batching import BALANCE_CHOICES
        from zo_edge.metrics import PICK_RULES
        from zo_edge.objectives import OBJECTIVES
        from zo_edge.optim import SCHEDULES
        from zo_edge.recipes import RECIPES

        _check_types(self)
        _require(
            self.recipe in ("", *RECIPES),
            f"unknown recipe {self.recipe!r}; choose one of: {', '.join(RECIPES)}, auto, none",
        )
        methods = registered_methods()
        _require(
            self.method in methods, f"unknown method {self.method!r}; choose one of: {', '.join(sorted(methods))}"
        )
        cls = methods[self.method]
        mc = self.method_config
        if mc is None or isinstance(mc, dict):
            self.method_config = _method_config(self.method, cls, dict(mc or {}))
        else:
            _require(
                isinstance(mc, cls.Config),
                f"method_config is a {type(mc).__name__}, not {self.method}'s {cls.Config.__name__}",
            )
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        self._check_data()
        self._check_session([self.provider])
        for name, low in (("steps", 1), ("batch_size", 1), ("save_every", 1), ("k", 0), ("dev_k", 0)):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            _require(low <= value <= MAX_COUNT, f"{flag} must be >= {low} and <= {MAX_COUNT}, got {value}")
        for name in ("eval_examples", "eval_every"):
            value = getattr(self, name)
            _require(0 <= value <= MAX_COUNT, f"--{name.replace('_', '-')} must be in 0..{MAX_COUNT}, got {value}")
        _require(0 <= self.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {self.seed}")
        _require(self.balance in BALANCE_CHOICES, f"--balance must be one of {', '.join(BALANCE_CHOICES)}")
        _require(self.pick in PICK_RULES, f"--pick must be one of {', '.join(PICK_RULES)}, got {self.pick!r}")
        _require(
            self.objective in OBJECTIVES,
            f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}",
        )
        # the optimizer: the method's defaults fill what is not given, then the method's own rules
        o = self.optim
        if o.optimizer is None:
            o.optimizer = cls.default_optimizer
        if o.lr is None:
            o.lr = float(cls.default_lr)
        accepted = ", ".join(sorted(cls.optimizers))
        _require(
            o.optimizer in cls.optimizers,
            f"method {self.method} accepts --optimizer {accepted}, not {o.optimizer!r}",
        )
        if cls.direct_sgd:
            for name, value in (("momentum", o.momentum), ("weight-decay", o.weight_decay)):
                _require(
                    value == 0,
                    f"method {self.method} takes plain SGD only (its rank-r update has no optimizer state): "
                    f"drop --{name} {value:g}",
                )
        _require(_finite_positive(o.lr), f"--lr must be a finite number > 0, got {o.lr!r}")
        _require(math.isfinite(o.momentum) and 0 <= o.momentum < 1, f"--momentum must be in [0, 1), got {o.momentum}")
        _require(
            math.isfinite(o.weight_decay) and o.weight_decay >= 0,
            f"--weight-decay must be a finite number >= 0, got {o.weight_decay}",
        )
        _require(
            o.schedule in SCHEDULES,
            f"--schedule must be one of {', '.join(sorted(SCHEDULES))}, got {o.schedule!r}",
        )
        _require(0 <= o.warmup <= self.steps, f"--warmup must be in 0..--steps ({self.steps}), got {o.warmup}")

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> TrainConfig:
        """From the nested form (a TOML file, ``RUN/config.json``): top-level keys, ``[method]`` and ``[optim]``.

        ``method`` is a table (``name`` plus the method's knobs) or, without knobs, the method's name.
        """
        return cls._build(*cls._split(data, where))

    @classmethod
    def from_sources(cls, toml_path: str | None, flags: dict[str, Any], *, default_recipe: str = "") -> TrainConfig:
        """The TOML file's values, then every flag given (the CLI passes None for a flag not given).

        Flags are flat (``--lr``, ``--nu``); each lands in its section: a TrainConfig key, an ``[optim]`` key, or
        else a knob of the chosen method (refused in one line if that method has no such knob).

        ``default_recipe`` (``zo-edge train`` passes ``auto``) applies when neither the flags nor the TOML name a
        recipe or a method: a user who only says which model and data gets the measured best recipe, one who picks
        a method gets that method's own defaults, and ``recipe = "none"`` asks for those explicitly.
        """
        from zo_edge.recipes import NO_RECIPE

        data = load_toml(toml_path) if toml_path else {}
        top, method, knobs, optim = cls._split(data, f"{toml_path}: " if toml_path else "")
        optim_keys = {s.name for s in field_specs(OptimConfig)}
        top_keys = set(cls.top_keys())
        flags = {k: v for k, v in flags.items() if v is not None}
        recipe = flags.get("recipe", top.get("recipe"))
        if recipe is None and method is None and "method" not in flags:
            recipe = default_recipe
        if recipe == NO_RECIPE:
            recipe = flags["recipe"] = ""
        if recipe:  # zo_edge/recipes.py: the recipe's values under the TOML's and the flags'
            from zo_edge.recipes import recipe_values, resolve_recipe

            model = flags.get("model", top.get("model", ""))
            base = recipe_values(recipe, model, flags.get("method", method))
            given = {*top, *knobs, *optim, *flags}
            user_data = bool(flags.get("data", top.get("data"))) or flags.get("task", top.get("task")) == "user-data"
            if "labels" in given and not user_data:  # a built-in task asked with the user's words: its own template
                given.add("template")
            flags = {
                **{k: v for k, v in base.items() if k not in given},
                **flags,
                "recipe": resolve_recipe(recipe, model),
            }
        for k, v in flags.items():
            if k == "method":
                method = v
            elif k in top_keys:
                top[k] = v
            elif k in optim_keys:
                optim[k] = v
            else:
                knobs[k] = v
        return cls._build(top, method, knobs, optim)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """From flat keys as the flags name them (``lr``, ``nu`` next to ``steps``): what scripts and benchmarks
        pass; each key lands in its section as in ``from_sources``."""
        return cls.from_sources(None, values)

    @classmethod
    def _split(cls, data: dict[str, Any], where: str) -> tuple[dict, str | None, dict, dict]:
        """(top-level values, method name, method knobs, optim values) of a nested dict, types checked."""
        data = dict(data)
        method = data.pop("method", None)
        knobs: dict[str, Any] = {}
        if isinstance(method, dict):
            knobs = dict(method)
            method = knobs.pop("name", None)
        _require(
            method is None or isinstance(method, str),
            f"{where}method must be a method name or a [method] table with name = ..., got {method!r}",
        )
        optim = data.pop("optim", {})
        _require(isinstance(optim, dict), f"{where}optim must be a table ([optim]), got {optim!r}")
        top = {s.name: s for s in field_specs(cls, skip=_NESTED)}
        for key in data:
            if key not in top:
                section = _section(key)
                hint = f"put it under [{section}]" if section else "valid keys mirror the flags of `zo-edge train`"
                raise ConfigError(f"{where}unknown key {key!r} at the top level: {hint}")
        all_knobs = method_knobs()
        for k, v in knobs.items():
            if k in all_knobs:  # a knob no method has is refused by _build, with the chosen method's list
                knobs[k] = _checked(all_knobs[k][0][1], v, where)
        optim_specs = {s.name: s for s in field_specs(OptimConfig)}
        unknown = sorted(set(optim) - set(optim_specs))
        _require(not unknown, f"{where}unknown [optim] key(s) {unknown}; valid: {', '.join(optim_specs)}")
        optim = {k: _checked(optim_specs[k], v, where) for k, v in optim.items()}
        return {k: _checked(top[k], v, where) for k, v in data.items()}, method, knobs, optim

    @classmethod
    def _build(cls, top: dict, method: str | None, knobs: dict, optim: dict) -> TrainConfig:
        if method is not None:
            top = {**top, "method": method}
        return cls(**top, method_config=dict(knobs), optim=OptimConfig(**optim))

    @classmethod
    def top_keys(cls) -> list[str]:
        return [s.name for s in field_specs(cls, skip=_NESTED)]

    def to_dict(self) -> dict[str, Any]:
        """The resolved, nested form (what ``RUN/config.json`` holds and ``from_dict`` reads back)."""
        own = list(TrainConfig.__annotations__)  # this class's fields first, then the shared sections
        specs = sorted(field_specs(type(self), skip=_NESTED), key=lambda s: own.index(s.name) if s.name in own else 99)
        out = {s.name: getattr(self, s.name) for s in specs}
        out["method"] = {"name": self.method, **dataclasses.asdict(self.method_config)}
        out["optim"] = dataclasses.asdict(self.optim)
        return json_safe(out)


def json_safe(obj: Any) -> Any:
    """Lists copied, tuples as lists: what json.dump writes and reads back identically."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _section(key: str) -> str | None:
    if key in {s.name for s in field_specs(OptimConfig)}:
        return "optim"
    if key in method_knobs():
        return "method"
    return None


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    _require(path.is_file(), f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None


# --- eval ---------------------------------------------------------------------------------------------------------
@dataclass
class ScoringConfig(DataFields, SessionFields):
    """``zo-edge prompts`` (and the base of ``eval``): a model, or a run that names its model, and a task's data."""

    model: str = _f("", "exported model folder (default with --run: the run's model)")
    run: str = _f("", "run folder whose trained state to score with (zero-shot without)")
    checkpoint: str = _f("best", "which checkpoint of --run: best | latest")
    seed: int = _f(0, "seed of the k-shot train/dev split (the test split is fixed)")
    k: int = _f(16, "k-shot examples per class of the train split (used to carve the dev split)")
    dev_k: int = _f(16, "dev examples per class")
    json: bool = _f(False, "print the result as JSON")

    #: what ``--run`` fills from the run's config.json when not given: the model and how prompts were built
    FROM_RUN: typing.ClassVar[tuple[str, ...]] = ("model", "max_len", "length_normalize", "seed", "k", "dev_k")
    #: ... and the run's task with its data, unless --task or --data names another one
    TASK_FROM_RUN: typing.ClassVar[tuple[str, ...]] = (
        "task", "data", "text_field", "label_field", "template", "labels", "bos", "skip_bad_rows",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_types(self)
        _require(bool(self.model), "a model folder is needed (or --run RUN, whose config.json names it)")
        self._check_data()
        self._check_session(self.provider_list())
        _require(
            self.checkpoint in ("best", "latest"), f"--checkpoint must be best or latest, got {self.checkpoint!r}"
        )
        for name in ("seed", "k", "dev_k"):
            value = getattr(self, name)
            cap = MAX_SEED if name == "seed" else MAX_COUNT
            _require(0 <= value <= cap, f"--{name.replace('_', '-')} must be in 0..{cap}, got {value}")

    def provider_list(self) -> list[str]:
        return [self.provider]

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> ScoringConfig:
        """The flags given; with ``--run``, every data/model setting not given comes from the run's config.json."""
        given = {k: v for k, v in flags.items() if v is not None and k in {f.name for f in fields(cls)}}
        if given.get("run"):
            run_cfg = read_run_config(given["run"])
            keys = cls.FROM_RUN + (() if "task" in given or "data" in given else cls.TASK_FROM_RUN)
            for k in keys:
                if k not in given and k in run_cfg:
                    given[k] = run_cfg[k]
        return cls(**given)


@dataclass
class EvalConfig(ScoringConfig):
    """``zo-edge eval``: ScoringConfig plus which split, how many examples, and one or several providers."""

    split: str = _f("test", "which split to score: test | dev")
    eval_examples: int = _f(500, "examples scored (0: all)")
    providers: str = _f("", "comma list: run the same evaluation on each available provider and compare")
    merged: str = _f(
        "", "a `zo-edge merge` output: evaluate its deployable graphs (onnx/, onnx-int4/) on each provider"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.split in ("test", "dev"), f"--split must be test or dev, got {self.split!r}")
        _require(self.eval_examples >= 0, f"--eval-examples must be >= 0 (0: all), got {self.eval_examples}")

    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()] if self.providers else [self.provider]


def read_run_config(run: str | Path) -> dict[str, Any]:
    """A run's resolved config (``RUN/config.json``) as a dict; the old flat form reads the same for eval's keys."""
    import json

    path = Path(run) / "config.json"
    _require(path.is_file(), f"{run} is not a zo-edge run folder (no config.json): pass the --out of zo-edge train")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); the run folder is damaged") from None
    _require(isinstance(data, dict), f"{path}: not a config object; the run folder is damaged")
    if "normalize" in data and "length_normalize" not in data:  # written before the rename
        data["length_normalize"] = data.pop("normalize")
    return data


# --- demo ---------------------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """``zo-edge demo``: where the export is cached, where the run goes, and the few overrides of its recipe."""

    artifacts: str = _f("artifacts", "where the exported model is cached")
    out: str = _f("runs/demo", "run folder; an existing one is replaced only if it is an earlier demo run or --force")
    force: bool = _f(
        False, "replace a non-empty --out that is not an earlier demo run (built aside, swapped at the end)"
    )
    steps: int = _f(0, "training steps (0: the recipe's)")
    eval_examples: int = _f(0, "held-out test sentences scored before and after (0: the recipe's 500)")
    int4: bool = _f(False, "train on the INT4 export instead of fp32")

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.steps >= 0, f"--steps must be >= 0 (0: the recipe's), got {self.steps}")
        _require(self.eval_examples >= 0, f"--eval-examples must be >= 0 (0: the recipe's), got {self.eval_examples}")
