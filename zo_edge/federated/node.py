"""The federated protocol's two ends (see the package docstring): FedServer and FedClient, and what they share.

No Flower import here: a message is a plain ``Msg`` (a config dict of scalars / lists and a dict of numpy arrays),
which ``zo_edge/federated/flower.py`` turns into Flower records and back, and the server talks to its clients
through a ``Transport`` (a Flower Grid in practice). That keeps the protocol testable and its rules in one place.

Everything a client replies is validated before it touches the global state (``check_reply``): its round, query
count, finite scalars of the right shape, a positive example count, sketches of the sent shapes and finite; a reply
that fails is dropped (and counted) as if the client had dropped out. A reply whose checksum of the replayed state
differs from the server's at that index is dropped too, and the client is told to resync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from runtime import rng
from runtime.contract import FEATURE_CANDIDATE_SCORING
from runtime.errors import ZoEdgeError
from runtime.method import written_params
from zo_edge.config import DataFields, TrainConfig, _f
from zo_edge.tasks.base import Example

if TYPE_CHECKING:
    from runtime.oracle import Oracle

__all__ = [
    "FedClient",
    "FedServer",
    "FederatedConfig",
    "FederatedError",
    "Msg",
    "Setup",
    "Transport",
    "check_federable",
    "check_reply",
    "parse_plan",
    "partition",
    "sample_nodes",
    "state_checksum",
    "trained_arrays",
]


class FederatedError(ZoEdgeError):
    """A federation that cannot run as asked (method, partition, plan); the message says what to change."""


@dataclass
class FederatedConfig:
    """``zo-edge federate``'s own flags (the training ones are ``zo-edge train``'s; ``--steps`` counts steps)."""

    clients: int = _f(4, "simulated clients (Flower SuperNodes), one data partition each")
    partition: str = _f("iid", "how the training examples are split over clients: iid | skew (label-skewed)")
    skew: float = _f(0.8, "--partition skew: share of each client's examples from its own dominant class")
    fraction: float = _f(1.0, "share of the joined clients sampled per round (at least one)")
    engine: str = _f("ray", "ray (Flower's simulation engine) | inprocess (same apps and messages, one process)")
    sketch_noise: float = _f(0.0, "zo-act: client-side Gaussian noise on its sketches, as a multiple of their RMS")
    snapshot_every: int = _f(0, "every N rounds: snapshot the global state, drop history older than the last one")
    timeout: float = _f(600.0, "seconds the server waits for a round's replies (the rest count as dropped)")
    join: str = _f("", "late joiners, 'node:round,...' (node = position among the sorted node ids)")
    faults: str = _f("", "injected client faults, 'round:client:kind,...' (kind: drop nan shape seed state)")

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise FederatedError(f"--clients must be >= 1, got {self.clients}")
        if self.partition not in ("iid", "skew"):
            raise FederatedError(f"--partition must be iid or skew, got {self.partition!r}")
        if not 0.0 < self.skew <= 1.0:
            raise FederatedError(f"--skew must be in (0, 1], got {self.skew}")
        if not 0.0 < self.fraction <= 1.0:
            raise FederatedError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.engine not in ("ray", "inprocess"):
            raise FederatedError(f"--engine must be ray or inprocess, got {self.engine!r}")
        if not (np.isfinite(self.sketch_noise) and self.sketch_noise >= 0):
            raise FederatedError(f"--sketch-noise must be a finite number >= 0, got {self.sketch_noise}")
        if self.snapshot_every < 0:
            raise FederatedError(f"--snapshot-every must be >= 0, got {self.snapshot_every}")
        parse_plan(self.join, 2, "--join")
        for _, _, kind in parse_plan(self.faults, 3, "--faults"):
            if kind not in FAULTS:
                raise FederatedError(f"--faults kind {kind!r} unknown; choose from {', '.join(FAULTS)}")


#: client faults the tests inject: no reply, a NaN scalar, a wrong shape, an unknown round, a corrupted state
FAULTS = ("drop", "nan", "shape", "seed", "state")


def parse_plan(text: str, parts: int, flag: str) -> list[tuple]:
    """'a:b,c:d' -> [(a, b), (c, d)] (ints, the last part of a fault a name); one-line error otherwise."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        bits = item.split(":")
        try:
            if len(bits) != parts:
                raise ValueError
            out.append(tuple(int(b) for b in bits[: parts - 1 if parts == 3 else parts]) + tuple(bits[2:]))
        except ValueError:
            form = "node:round" if parts == 2 else "round:client:kind"
            raise FederatedError(f"{flag}: {item!r} is not {form}") from None
    return out


@dataclass
class Setup:
    """What every node is built from: the resolved training config (``TrainConfig.to_dict``) and the federation's.

    Plain data, so Flower can ship it to its simulation workers."""

    train: dict[str, Any]
    fed: dict[str, Any] = field(default_factory=dict)
    #: one id per federation run, so a process's cached clients never outlive their run
    run: str = field(default_factory=lambda: uuid.uuid4().hex)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    def fed_config(self) -> FederatedConfig:
        return FederatedConfig(**self.fed)

    def key(self) -> str:
        return hashlib.blake2b(json.dumps(asdict(self), sort_keys=True).encode(), digest_size=8).hexdigest()


@dataclass
class Msg:
    config: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Transport(Protocol):
    """How the server reaches its clients (flower.py: over a Flower Grid); ``bytes`` counts the wire both ways."""

    bytes: dict[str, int]

    def nodes(self) -> list[int]: ...

    def send(self, messages: dict[int, Msg], kind: str, group: str) -> dict[int, Msg | None]: ...


def check_federable(cfg: TrainConfig) -> None:
    """Refuse, in one line, a method or setting the protocol cannot reproduce from seeds and scalars."""
    from zo_edge.methods import get_method

    cls = get_method(cfg.method)
    if cls.not_federated:
        raise FederatedError(f"{cfg.method} cannot be federated: {cls.not_federated}")


def trained_arrays(oracle: Oracle, method) -> dict[str, np.ndarray]:
    """Everything training can have changed in a replica, by checkpoint name (views, not copies): what a
    checkpoint of ``zo-edge train`` holds (``runtime.loop.trained_arrays``: its adapters, the bound params the
    method writes, for ``--layers head`` the final norm's gain alone, and the method's and optimizer's state).
    What the checksum hashes and a snapshot ships."""
    from runtime.loop import trained_arrays as checkpoint_arrays

    return checkpoint_arrays(oracle, method, written_params(method, oracle))


def state_checksum(oracle: Oracle, method) -> str:
    """blake2b-128 of ``trained_arrays`` (names, dtypes, shapes, bytes)."""
    arrays = trained_arrays(oracle, method)
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def partition(examples: list[Example], fed: FederatedConfig, cid: int, seed: int) -> list[Example]:
    """Client ``cid``'s share of the training examples: a seeded shuffle dealt round-robin (iid), or, for skew,
    a ``skew`` share from the client's dominant class (cid mod classes) and the rest from the others.

    One client gets everything in the original order (so a one-client federation sees the centralised data)."""
    n = fed.clients
    if n == 1:
        return list(examples)
    order = rng.stream(seed, "fed-partition").permutation(len(examples))
    if fed.partition == "iid":
        part = [examples[i] for i in order[cid::n]]
    else:
        classes = sorted({e.label for e in examples})
        by_class = {c: [examples[i] for i in order if examples[i].label == c] for c in classes}
        size = len(examples) // n
        own = classes[cid % len(classes)]
        # the clients sharing a dominant class split its examples; the others' examples are dealt evenly
        owners = [j for j in range(n) if classes[j % len(classes)] == own]
        mine = by_class[own][owners.index(cid) :: len(owners)][: int(round(fed.skew * size))]
        rest = [e for c in classes if c != own for e in by_class[c]]
        part = mine + rest[cid::n][: max(size - len(mine), 0)]
    if not part:
        raise FederatedError(f"client {cid} of {n} gets no training examples: use fewer --clients or a larger --k")
    return part


def sample_nodes(joined: list[int], k: int, seed: int, t: int) -> list[int]:
    """The ``k`` clients of step ``t`` (sorted), drawn from ``joined`` by the run seed.

    Indices are drawn, not the ids: Flower's node ids are random 64-bit integers, and numpy turns a list mixing
    int64- and uint64-range ids into float64, so the Ray engine's ids came back rounded, as floats."""
    drawn = rng.stream(seed, "fed-sample", t).choice(len(joined), k, replace=False)
    return sorted(joined[int(i)] for i in drawn)


def check_reply(reply: Msg, t: int, queries: int, shapes: dict[str, tuple] | None = None) -> str:
    """'' when the reply is well-formed, else why not (it is then dropped)."""
    c = reply.config
    try:
        if shapes is not None:  # a sketch reply
            if set(reply.arrays) != set(shapes):
                return "sketch groups differ from the ones sent"
            for g, shape in shapes.items():
                a = reply.arrays[g]
                if a.shape != shape or a.dtype != np.float64 or not np.isfinite(a).all():
                    return f"sketch {g}: shape {a.shape} dtype {a.dtype} or non-finite values"
            return ""
        if int(c["t"]) != t:
            return f"reply for round {c['t']}, not {t} (unknown seed)"
        if bool(c["skipped"]):
            return "non-finite local loss (skipped)"
        g = np.asarray(c["scalars"], np.float64)
        if g.shape != (queries,):
            return f"{g.shape[0] if g.ndim == 1 else g.shape} scalars, expected {queries}"
        if not np.isfinite(g).all():
            return "non-finite scalars"
        if not int(c["n"]) > 0:
            return "no examples"
        if not isinstance(c["checksum"], str) or int(c["index"]) < 0:
            return "malformed index/checksum"
    except (KeyError, TypeError, ValueError) as e:
        return f"malformed reply ({type(e).__name__}: {e})"
    return ""


# --- the client -----------------------------------------------------------------------------------------------------
#: the task, its split and the tokenizer, by data settings: simulated clients in one process parse the dataset once
#: (Rotten Tomatoes' bz2 CSV: about 1 s a client), each then takes its own partition of the same split
_DATA: dict[str, tuple] = {}


def _task_data(cfg: TrainConfig) -> tuple:
    """(task, split, tokenizer) of ``cfg``, loaded once per process and data settings (read-only: shared)."""
    from zo_edge.data import load_tokenizer
    from zo_edge.train import load_task_data

    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataFields)}
    stamp = os.stat(cfg.data).st_mtime_ns if cfg.data and os.path.exists(cfg.data) else 0
    key = json.dumps([fields, cfg.seed, cfg.k, cfg.dev_k, cfg.model, stamp], sort_keys=True, default=str)
    if key not in _DATA:
        _DATA[key] = (*load_task_data(cfg), load_tokenizer(cfg.model))
    return _DATA[key]


#: how a client gets an oracle over sessions other clients share: (its Oracle, the pristine base values of the
#: bound weights it may change, {} when it changes none). flower.py's ``_shared_oracle``.
Share = Callable[[TrainConfig], "tuple[Oracle, dict[str, np.ndarray]]"]


class FedClient:
    """One client: its own trained state (base + replayed history), its partition, its batch order.

    ``share``: simulated clients in one process share one copy of the model's sessions (and prefix cache). Where
    the method changes bound weights (MeZO on ``--layers head``: the final norm's gain), each client keeps its own
    copy of those and swaps it into the shared arrays around every message it handles (``swapped_in``)."""

    def __init__(self, setup: Setup, cid: int, *, share: Share | None = None) -> None:
        self.setup = setup
        self.cid = cid
        self.cfg = setup.train_config()
        self.fed = setup.fed_config()
        self.faults = {(r, c): k for r, c, k in parse_plan(self.fed.faults, 3, "--faults")}
        self._share = share
        self._calibration: list | None = None
        #: this client's own values of the shared bound weights its method changes (None: nothing shared)
        self._own: dict[str, np.ndarray] | None = None
        self.build()
        if self._own is not None:
            self._own = {k: v.copy() for k, v in self._own.items()}

    def build(self) -> None:
        """A fresh start from the base (first contact, or a resync): index 0, no history applied."""
        from zo_edge.data import TaskBatches
        from zo_edge.train import build_method, make_oracle

        cfg = self.cfg
        if self._share:
            self.oracle, base = self._share(cfg)
            for name, value in base.items():  # the shared arrays hold whichever client ran last: start from base
                self.oracle.params[name][...] = value
            self._own = {name: self.oracle.params[name] for name in base} if base else None
        else:
            options = cfg.provider_options([cfg.provider])[cfg.provider]
            self.oracle = make_oracle(cfg.model, cfg.provider, cfg.threads, cfg.micro_batch, options, cfg.layers)
        task, data, tokenizer = _task_data(cfg)
        examples = partition(data.train, self.fed, self.cid, cfg.seed)
        self.batches = TaskBatches(
            task,
            examples,
            tokenizer,
            cfg.batch_size,
            cfg.max_len,
            cfg.seed + self.cid,
            cfg.objective,
            # a label-skewed client that re-balanced its own batches would hide the skew being studied
            balance="off" if self.fed.partition == "skew" and self.fed.clients > 1 else cfg.balance,
            candidate_scoring=self.oracle.manifest.has(FEATURE_CANDIDATE_SCORING),
        )
        self.method = build_method(cfg)
        self.method.init(self.oracle, cfg.seed)
        self.index = 0
        #: the step whose batch ``batch`` is: a method with several rounds a step probes one batch in all of them
        self._batch = None
        self._drawn = 0  # batches drawn from self.batches so far: self._batch is batch number _drawn - 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """This client's values in the shared bound weights while it works, copied back after (nothing to do
        without a shared oracle)."""
        if self._own is None:
            yield
            return
        params = self.oracle.params
        for name, value in self._own.items():
            params[name][...] = value
        try:
            yield
        finally:
            if self._own is not None:
                self._own = {name: np.array(params[name], copy=True) for name in self._own}

    def handle(self, msg: Msg) -> Msg:
        phase = msg.config["phase"]
        with self.swapped_in():
            if phase == "sketch":
                return self._sketch(msg)
            if phase == "probe":
                return self._probe(msg)
        raise FederatedError(f"unknown phase {phase!r} in a server message")

    def _sketch(self, msg: Msg) -> Msg:
        """Σ over this client's calibration batches of Xᵀ(X Ω_g), optionally noised; nothing else leaves."""
        from zo_edge.methods.zo_act import sketch_sums

        if self._calibration is None:
            self._calibration = self.batches.calibration(self.method.config.calib_batches)
        sums = sketch_sums(self.oracle, self._calibration, msg.arrays)
        sigma = self.fed.sketch_noise
        if sigma:
            noise = rng.stream(self.cfg.seed, "fed-sketch-noise", self.cid, int(msg.config["sweep"]))
            sums = {g: s + sigma * np.sqrt(np.mean(s * s)) * noise.standard_normal(s.shape) for g, s in sums.items()}
        return Msg({"cid": self.cid, "n": len(self._calibration)}, sums)

    def _probe(self, msg: Msg) -> Msg:
        c = msg.config
        t = int(c["t"])
        if c.get("reset"):
            self.build()
        if "snapshot_index" in c:
            self.load_snapshot(msg.arrays, int(c["snapshot_index"]))
        elif self.index == 0 and any(k.startswith("basis/") for k in msg.arrays):
            self.method.set_bases(self.oracle, {k.removeprefix("basis/"): v for k, v in msg.arrays.items()})
        counts = list(c["counts"])
        flat = np.asarray(c["history"], np.float64)
        ends = np.cumsum(counts).tolist()
        entries = [(int(s), flat[e - n : e]) for s, n, e in zip(c["steps"], counts, ends, strict=True)]
        if not self.catch_up(int(c["from"]), entries):
            return self._reply(t, "gap", skipped=True)  # we lost state: the server will resync us
        fault = self.faults.get((t, self.cid))
        if fault == "drop":
            raise ClientDropped(f"client {self.cid} dropped out in round {t} (injected)")
        if fault == "state":
            next(iter(self.method.trainable(self.oracle).values())).flat[0] += 1e-3
        checksum = state_checksum(self.oracle, self.method)
        step = t // self.method.rounds_per_step
        # the centralised loop draws one batch a step, for all of its queries: batch number `step` of this client's
        # stream, a function of (seed, cid, step) alone, so a client rebuilt in another process (Flower's Ray engine
        # hands a node's messages to any worker) draws the same batch
        while self._drawn <= step:
            self._batch, self._drawn = self.batches.next(), self._drawn + 1
        batch, objective = self._batch
        p = self.method.probe(self.oracle, batch, objective, t)
        g = [float(x) for x in p.scalars]
        if fault == "nan":
            g[0] = float("nan")
        elif fault == "shape":
            g.append(0.0)
        return self._reply(t + 1000 if fault == "seed" else t, checksum, scalars=g, loss=p.loss, skipped=p.skipped)

    def catch_up(self, start: int, entries: list[tuple[int, np.ndarray]]) -> bool:
        """Replay history entries ``start``, ``start + 1``, ... (those already applied are skipped: a reply lost last
        round); False if they begin after this client's index (it lost state and must resync)."""
        for i, (r, g) in enumerate(entries, start=start):
            if i < self.index:
                continue
            if i > self.index:
                return False
            self.method.replay(self.oracle, r, g)
            self.index += 1
        return True

    def _reply(self, t: int, checksum: str, *, scalars=(), loss: float = float("nan"), skipped: bool = False) -> Msg:
        return Msg(
            {
                "t": t,
                "cid": self.cid,
                "index": self.index,
                "checksum": checksum,
                "scalars": [float(s) for s in scalars],
                "n": int(self.cfg.batch_size),
                "loss": float(loss),
                "skipped": bool(skipped),
            }
        )

    def load_snapshot(self, arrays: dict[str, np.ndarray], index: int) -> None:
        """Become the replica at history ``index`` with these trained arrays (``method/`` keys: the method's state):
        a server snapshot for a late joiner or a resync, or the node's own saved replica under ``flwr run``."""
        self.oracle.trained.load_arrays({k: v for k, v in arrays.items() if not k.startswith("method/")})
        self.method.load_state_dict(
            {k.removeprefix("method/"): v for k, v in arrays.items() if k.startswith("method/")}
        )
        self.index = index


class ClientDropped(RuntimeError):
    """An injected dropout: the client never answers this round (Flower turns it into an error reply)."""


# --- the server -----------------------------------------------------------------------------------------------------
@dataclass
class RoundLog:
    round: int
    step: int  # the training step the round belongs to (round // rounds_per_step)
    sampled: int
    answered: int
    dropped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    resynced: int = 0
    applied: bool = False
    loss: float = float("nan")  # example-weighted mean of the clients' probe losses
    bytes_down: int = 0
    bytes_up: int = 0
    held: int = 0  # history entries the server holds after the round (bounded by --snapshot-every)
    eval: dict[str, float] = field(default_factory=dict)


class FedServer:
    """Holds the global state (its own replica, which also evaluates), the history, and each node's index.

    History indices are absolute (entry i is the i-th applied round); with ``--snapshot-every N`` the server keeps
    only the entries from ``origin`` on (at most 2N) and one snapshot of its state at ``snapshot_index`` >= origin:
    a client whose index is below ``origin`` (a late joiner, a resync) gets the snapshot and the entries since."""

    def __init__(self, setup: Setup, prepared=None, *, evaluate: Callable | None = None) -> None:
        from zo_edge.train import build_method, prepare

        self.setup = setup
        self.cfg = setup.train_config()
        self.fed = setup.fed_config()
        check_federable(self.cfg)
        self.p = prepared or prepare(self.cfg)
        self.oracle = self.p.oracle
        self.method = build_method(self.cfg)
        self.method.init(self.oracle, self.cfg.seed)
        #: scalars per round: every query's, or one where the method's queries are rounds of their own (MeZO)
        self.rounds_per_step = int(self.method.rounds_per_step)
        self.queries = int(self.method.config.queries) // self.rounds_per_step
        #: the global history from absolute index ``origin`` on: (round r, aggregated scalars g_1..g_q) per round
        self.history: list[tuple[int, np.ndarray]] = []
        self.origin = 0
        #: checksums[i - origin]: the global state's after i entries (index 0: the base, after calibration)
        self.checksums: list[str] = []
        #: the global state (``trained_arrays``, copies) at absolute index ``snapshot_index``, once taken
        self.snapshot: dict[str, np.ndarray] | None = None
        self.snapshot_index = 0
        self.index: dict[int, int] = {}  # node -> its confirmed history index
        self.resync: set[int] = set()
        self.has_bases: set[int] = set()  # nodes that confirmed a round after receiving the ZO-Act bases
        self.evaluate = evaluate
        self.rounds: list[RoundLog] = []
        self.calibration_bytes = {"down": 0, "up": 0}

    # --- round 0: a federated ZO-Act basis -------------------------------------------------------------------
    def calibrate(self, transport: Transport, nodes: list[int]) -> None:
        from zo_edge.methods.zo_act import calibrate_bases

        c = self.method.config
        sweeps = [0]

        def sweep(omega: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            sent = {g: np.ascontiguousarray(w, np.float32) for g, w in omega.items()}
            msgs = {n: Msg({"phase": "sketch", "sweep": sweeps[0]}, sent) for n in nodes}
            replies = transport.send(msgs, "query", f"calibration-{sweeps[0]}")
            sweeps[0] += 1
            shapes = {g: w.shape for g, w in sent.items()}
            good = [r for r in replies.values() if r is not None and not check_reply(r, -1, 0, shapes)]
            if not good:
                raise FederatedError("no client answered the zo-act calibration sweep with valid sketches")
            total = {g: np.zeros(s, np.float64) for g, s in shapes.items()}
            for r in good:
                for g in total:
                    total[g] += r.arrays[g]
            return total

        bases = calibrate_bases(
            self.oracle, [], c.rank, rounds=c.calib_rounds, oversample=c.oversample, seed=self.cfg.seed, sweep=sweep
        )
        self.method.set_bases(self.oracle, bases)
        self.bases = bases

    # --- rounds ----------------------------------------------------------------------------------------------
    def run(self, transport: Transport, on_round: Callable[[RoundLog], None] | None = None) -> list[RoundLog]:
        order = sorted(transport.nodes())
        joins = {order[j]: r for j, r in parse_plan(self.fed.join, 2, "--join") if j < len(order)}
        self.bases = None
        if self.method.needs_calibration:
            b0 = dict(transport.bytes)
            self.calibrate(transport, [n for n in order if joins.get(n, 0) == 0])
            self.calibration_bytes = {k: transport.bytes[k] - b0[k] for k in b0}
        self.checksums = [state_checksum(self.oracle, self.method)]
        if self.evaluate:
            self.initial_eval = self.evaluate(self.p)
        per = self.rounds_per_step
        for r in range(self.cfg.steps * per):
            t = r // per  # the step: its rounds sample the same clients (each probes its one batch of the step)
            joined = [n for n in order if joins.get(n, 0) <= r]
            if not joined:
                raise FederatedError(f"no client has joined by round {r}: check --join, or that the clients connected")
            k = max(1, int(round(self.fed.fraction * len(joined))))
            picked = sample_nodes(joined, k, self.cfg.seed, t)
            b0 = dict(transport.bytes)
            log = self.round(transport, r, picked)
            log.bytes_down, log.bytes_up = (transport.bytes[k] - b0[k] for k in ("down", "up"))
            step_done = (r + 1) % per == 0
            if (
                self.evaluate
                and step_done
                and (self.cfg.eval_every and (t + 1) % self.cfg.eval_every == 0 or t + 1 == self.cfg.steps)
            ):
                log.eval = self.evaluate(self.p)
            self.rounds.append(log)
            if on_round:
                on_round(log)
        return self.rounds

    @property
    def end(self) -> int:
        """The absolute index after the last history entry (rounds applied so far)."""
        return self.origin + len(self.history)

    def _message(self, node: int, t: int) -> Msg:
        reset = node in self.resync
        start = 0 if reset else self.index.get(node, 0)
        cfg: dict[str, Any] = {"phase": "probe", "t": t, "queries": self.queries, "reset": reset}
        arrays: dict[str, np.ndarray] = {}
        if start < self.origin:  # the entries it needs are gone: the snapshot, then the history since
            assert self.snapshot is not None, "history trimmed without a snapshot"
            arrays = dict(self.snapshot)
            cfg["snapshot_index"] = start = self.snapshot_index
        elif start == 0 and self.bases is not None and (reset or node not in self.has_bases):
            arrays = {f"basis/{g}": a for g, a in self.bases.items()}
        entries = self.history[start - self.origin :]
        cfg.update(
            {
                "from": start,
                "steps": [s for s, _ in entries],
                "counts": [len(g) for _, g in entries],
                "history": [float(x) for _, g in entries for x in g],
            }
        )
        return Msg(cfg, arrays)

    def round(self, transport: Transport, t: int, nodes: list[int]) -> RoundLog:
        replies = transport.send({n: self._message(n, t) for n in nodes}, "train", str(t))
        log = RoundLog(round=t, step=t // self.rounds_per_step, sampled=len(nodes), answered=0)
        good: list[Msg] = []
        for node in nodes:
            reply = replies.get(node)
            if reply is None:
                log.dropped += 1
                continue
            why = check_reply(reply, t, self.queries)
            if reply.config.get("checksum") == "gap":
                why = "client lost its state"
                self.resync.add(node)
            elif not why:
                at = int(reply.config["index"])
                if not self.origin <= at <= self.end or reply.config["checksum"] != self.checksums[at - self.origin]:
                    why = "replayed state differs from the server's (resync)"
                    self.resync.add(node)
                    log.resynced += 1
                else:
                    self.index[node] = at
                    self.resync.discard(node)
                    self.has_bases.add(node)
            if why:
                log.rejected[why] = log.rejected.get(why, 0) + 1
                continue
            good.append(reply)
        log.answered = len(good)
        g = np.zeros(0, np.float64)  # nobody valid answered: a skipped step (still a history entry: MeZO's θ drift)
        if good:
            n = np.array([float(r.config["n"]) for r in good])
            w = n / n.sum()
            g = np.zeros(self.queries, np.float64)
            for wi, r in zip(w, good, strict=True):
                g += wi * np.asarray(r.config["scalars"], np.float64)
            log.loss = float(sum(wi * float(r.config["loss"]) for wi, r in zip(w, good, strict=True)))
            if not np.isfinite(g).all():
                g = np.zeros(0, np.float64)
        log.applied = self.method.replay(self.oracle, t, g)
        self.history.append((t, g))
        self.checksums.append(state_checksum(self.oracle, self.method))
        every = self.fed.snapshot_every
        if every and self.end - self.snapshot_index >= every:
            self.take_snapshot()
        log.held = len(self.history)
        return log

    def take_snapshot(self) -> None:
        """Snapshot the global state at the current index and drop the entries before the previous snapshot: the
        history then holds at most 2N entries, and a client at most one snapshot period behind (the usual one
        round) still catches up by replay rather than by the snapshot's bytes."""
        drop = self.snapshot_index - self.origin
        self.history = self.history[drop:]
        self.checksums = self.checksums[drop:]
        self.origin = self.snapshot_index
        self.snapshot = {k: np.array(v, copy=True) for k, v in trained_arrays(self.oracle, self.method).items()}
        self.snapshot_index = self.end

    def result(self) -> dict[str, Any]:
        return {
            "rounds": [asdict(r) for r in self.rounds],
            "rounds_per_step": self.rounds_per_step,
            "history_origin": self.origin,
            "history": [[t, g.tolist()] for t, g in self.history],
            "calibration_bytes": self.calibration_bytes,
            "checksum": self.checksums[-1] if self.checksums else "",
        }
