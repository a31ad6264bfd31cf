"""The Flower side: a ServerApp (``@app.main``, the Message API) and a ClientApp around node.py's protocol.

    zo-edge federate ...                                   # simulate(): Ray simulation engine, or --engine inprocess
    flwr run examples/flower-app zo-edge                   # real machines (examples/flower-app/README.md)

Messages are Flower ``RecordDict``s: a ``ConfigRecord`` "zo" (round, indices, the history's scalars as a list of
doubles, the checksum) and, only when arrays travel (ZO-Act's Ω / sketches / bases, a snapshot), an
``ArrayRecord`` "arrays". Bytes are counted as Flower puts them on the wire: every object of the message's tree
deflated (what a SuperNode pushes to its SuperLink object store) plus the message's metadata protobuf.

``--engine inprocess`` runs the same two apps and the same Messages in one process through ``LocalGrid``, which
round-trips every message through Flower's serialisation: the tests use it (no Ray start-up on a 2-core machine).

Under ``flwr run`` on the deployment runtime (a SuperLink, SuperNodes), every message a SuperNode receives runs in a
``flwr-clientapp`` process of its own, so nothing a client holds in memory survives to its next round: the ClientApp
keeps its replica (index, trained arrays, method state) in its node's ``Context.state``, which Flower hands from
message to message, and rebuilds from it (tests/federated/test_deployment.py runs that runtime on localhost).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto, metadata_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from zo_edge.federated.node import FedClient, FederatedConfig, FederatedError, FedServer, Msg, Setup, trained_arrays

__all__ = [
    "GridTransport",
    "LocalGrid",
    "client_app",
    "from_record",
    "make_client_app",
    "make_server_app",
    "server_app",
    "setup_from_run_config",
    "simulate",
    "to_record",
    "wire_bytes",
]


# --- messages ------------------------------------------------------------------------------------------------------
#: config key naming the arrays that were 0-d (Flower's Array comes back 1-d for them: step counters)
_SCALARS = "zo-edge/0d-arrays"


def to_record(msg: Msg) -> RecordDict:
    config = dict(msg.config)
    if msg.arrays:
        scalars = [k for k, v in msg.arrays.items() if np.ndim(v) == 0]
        if scalars:
            config[_SCALARS] = scalars
    rd = RecordDict({"zo": ConfigRecord(config)})
    if msg.arrays:
        rd["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in msg.arrays.items()})
    return rd


def from_record(rd: RecordDict) -> Msg:
    config = dict(rd["zo"])
    scalars = set(config.pop(_SCALARS, []))
    arrays = {k: a.numpy() for k, a in rd["arrays"].items()} if "arrays" in rd else {}
    arrays = {k: v.reshape(()) if k in scalars else v for k, v in arrays.items()}
    return Msg(config, arrays)


def wire_bytes(message: Message) -> int:
    """Bytes of ``message`` as Flower transmits it: each object of its tree deflated, plus its metadata."""
    return sum(len(o.deflate()) for o in get_all_nested_objects(message).values()) + len(
        metadata_to_proto(message.metadata).SerializeToString()
    )


class GridTransport:
    """node.Transport over a Flower Grid: Messages out, replies in (an error reply or a missing one is None)."""

    def __init__(self, grid: Grid, timeout: float, expected: int = 1) -> None:
        self.grid = grid
        self.timeout = timeout
        self.expected = expected
        self.bytes = {"down": 0, "up": 0}

    def nodes(self) -> list[int]:
        """The connected SuperNodes, once ``expected`` of them are (or ``timeout`` passes): the ServerApp can start
        before its clients register (Flower's Ray engine does), and a round sampled from nobody is no round.
        Flower's own strategies wait the same way (``strategy_utils.sample_nodes``)."""
        deadline = time.monotonic() + self.timeout
        while len(ids := list(self.grid.get_node_ids())) < self.expected and time.monotonic() < deadline:
            time.sleep(0.2)
        if not ids:
            raise FederatedError(
                f"no client connected within {self.timeout:g} s; start the SuperNodes, or raise --timeout"
            )
        return sorted(ids)

    def send(self, messages: dict[int, Msg], kind: str, group: str) -> dict[int, Msg | None]:
        mtype = MessageType.TRAIN if kind == "train" else MessageType.QUERY
        out = [Message(to_record(m), dst_node_id=n, message_type=mtype, group_id=group) for n, m in messages.items()]
        self.bytes["down"] += sum(wire_bytes(m) for m in out)
        replies: dict[int, Msg | None] = dict.fromkeys(messages)
        for r in self.grid.send_and_receive(out, timeout=self.timeout):
            self.bytes["up"] += wire_bytes(r)
            if r.has_error() or r.metadata.src_node_id not in replies:
                continue
            try:
                replies[r.metadata.src_node_id] = from_record(r.content)
            except (KeyError, TypeError, ValueError):
                replies[r.metadata.src_node_id] = None  # malformed records: dropped like a missing reply
        return replies


# --- the apps -------------------------------------------------------------------------------------------------------
#: this process's clients, by (setup key, partition): a Ray worker (or LocalGrid) keeps its clients between rounds
_CLIENTS: dict[tuple[str, int], FedClient] = {}
#: this process's shared oracles, by model and layers: (the first Oracle, the pristine values of the bound weights in
#: the trained blocks' reach)
_SESSIONS: dict[tuple, tuple[Any, dict[str, np.ndarray]]] = {}
#: share one model among a process's clients when the bound weights a client swaps in and out around each message
#: are at most this share of the model's (``--layers head``: 576 of 135M values); above it each client loads its own
SWAP_LIMIT = 0.05


def _swapped(cfg) -> list[str]:
    """The bound weights a client of ``cfg`` would swap (those in the trained blocks' reach when its method changes
    weights, else none), or None when they are too many to share a model (``SWAP_LIMIT``)."""
    from runtime.contract import Manifest
    from runtime.layers import n_blocks, parse_layers, restrict_manifest
    from zo_edge.methods import get_method

    if not get_method(cfg.method).changes_weights:
        return []
    manifest = Manifest.load(cfg.model)
    mine = restrict_manifest(manifest, parse_layers(cfg.layers, n_blocks(manifest))).params
    size = sum(int(np.prod(s.shape)) for s in mine)
    total = sum(int(np.prod(s.shape)) for s in manifest.params)
    return [s.name for s in mine] if size <= SWAP_LIMIT * total else None


def _shared_oracle(cfg) -> tuple[Any, dict[str, np.ndarray]]:
    """An Oracle over this process's one set of sessions of the model (and one prefix cache: a training row's
    frozen stack runs once in the process), with its own TrainedState (adapters), and the pristine base values of
    the bound weights the client swaps (``FedClient.swapped_in``): 8 simulated clients hold one copy of the model."""
    from runtime.layers import n_blocks, parse_layers
    from runtime.oracle import Oracle
    from zo_edge.train import make_oracle

    swapped = _swapped(cfg) or []
    # the swapped names are part of the key: only the clients that swap them in ever change those shared arrays
    key = (cfg.model, cfg.provider, cfg.threads, cfg.micro_batch, cfg.layers, tuple(swapped))
    if key not in _SESSIONS:
        options = cfg.provider_options([cfg.provider])[cfg.provider]
        first = make_oracle(cfg.model, cfg.provider, cfg.threads, cfg.micro_batch, options, cfg.layers)
        _SESSIONS[key] = (first, {n: first.params[n].copy() for n in swapped})
    first, base = _SESSIONS[key]
    blocks = parse_layers(cfg.layers, n_blocks(first.session.manifest))
    oracle = Oracle(
        first.session,
        micro_batch=cfg.micro_batch,
        blocks=blocks,
        prefix=first.prefix,
        candidate_head=first.candidate_head,
    )
    return oracle, base


def _client(setup: Setup, cid: int) -> FedClient:
    key = (setup.key(), cid)
    if key not in _CLIENTS:
        cfg = setup.train_config()
        _CLIENTS[key] = FedClient(setup, cid, share=_shared_oracle if _swapped(cfg) is not None else None)
    return _CLIENTS[key]


#: ``Context.state`` keys of a client's replica between messages (``flwr run``: see the module docstring)
_REPLICA, _REPLICA_ARRAYS = "zo-edge/replica", "zo-edge/replica-arrays"
#: per cached client (``_CLIENTS``' key): the sequence number of the replica it last saved, i.e. the one it holds
_SAVED: dict[tuple[str, int], int] = {}


def _save_replica(key: tuple[str, int], client: FedClient, state: RecordDict) -> None:
    """Put the client's replica (its history index and everything training can change, numbered) into ``state``."""
    seq = int(state[_REPLICA]["seq"]) + 1 if _REPLICA in state else 0
    with client.swapped_in():
        rd = to_record(Msg({"index": client.index, "seq": seq}, trained_arrays(client.oracle, client.method)))
    state[_REPLICA] = rd["zo"]
    if "arrays" in rd:
        state[_REPLICA_ARRAYS] = rd["arrays"]
    _SAVED[key] = seq


def _restore_replica(key: tuple[str, int], client: FedClient, state: RecordDict) -> None:
    """Load the replica ``_save_replica`` left in ``state`` into ``client``, unless the client is the one that saved
    it (this process handled the node's last message). A fresh ``flwr-clientapp`` process would otherwise start
    every round from the base: index 0 (a "lost my state" answer to every other round), and without ZO-Act's
    bases, which the server sends once."""
    if _REPLICA not in state or _SAVED.get(key) == int(state[_REPLICA]["seq"]):
        return
    arrays = {"arrays": state[_REPLICA_ARRAYS]} if _REPLICA_ARRAYS in state else {}
    saved = from_record(RecordDict({"zo": state[_REPLICA], **arrays}))
    with client.swapped_in():
        client.load_snapshot(saved.arrays, int(saved.config["index"]))  # a late joiner's path, from our own state


def make_client_app(setup: Setup | None = None, persist: bool | None = None) -> ClientApp:
    """The ClientApp; ``setup`` None: read from the run config (``flwr run``), partition from the node config.

    ``persist`` (default: when ``setup`` is None, i.e. under ``flwr run``): keep each client's replica in its node's
    ``Context.state`` between messages, for runtimes that start a process per message (the deployment runtime).
    ``simulate()`` leaves it off: its processes keep their clients, and its rounds need not copy the state."""
    app = ClientApp()
    keep = setup is None if persist is None else persist

    def handle(msg: Message, context: Context) -> Message:
        s = setup or setup_from_run_config(context.run_config, client=True, run=context.run_id)
        cid = int(context.node_config.get("partition-id", 0))
        client = _client(s, cid)
        if keep:
            _restore_replica((s.key(), cid), client, context.state)
        reply = client.handle(from_record(msg.content))
        if keep:
            _save_replica((s.key(), cid), client, context.state)
        return Message(to_record(reply), reply_to=msg)

    app.train()(handle)
    app.query()(handle)
    return app


def make_server_app(server: FedServer | None = None, out: str | None = None, on_round=None) -> ServerApp:
    """The ServerApp (``@app.main``); ``server`` None: built from the run config (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        srv = server or FedServer(setup_from_run_config(context.run_config, run=context.run_id), evaluate=_evaluate)
        srv.run(GridTransport(grid, srv.fed.timeout, srv.fed.clients), on_round)
        save_run(srv, out or srv.cfg.out)

    return app


def _config_file(path: str) -> Path:
    """The run config's ``config`` file on this machine: an absolute path as is; a relative one in the working
    directory (where flower-superlink / flower-supernode was started: a machine's own copy) if it is there, else in
    the Flower App as installed here (``flwr run`` ships the app folder's ``*.toml`` in its bundle, unpacked under
    ``$FLWR_HOME/apps/`` and put on ``sys.path`` before our app is loaded): so the app folder's fed.toml reaches
    every machine without a copy on each."""
    from flwr.common.constant import APP_DIR
    from flwr.supercore.utils import get_flwr_home

    p = Path(path).expanduser()
    if p.is_absolute() or p.is_file():
        return p
    apps = (get_flwr_home() / APP_DIR).resolve()
    for entry in sys.path:
        folder = Path(entry or ".").resolve()
        if folder.is_relative_to(apps) and (folder / p).is_file():
            return folder / p
    return p  # not found anywhere: load_toml names it


def setup_from_run_config(run_config: dict, client: bool = False, run: int | str | None = None) -> Setup:
    """``flwr run``: the run config's ``config`` names a TOML file with ``zo-edge train``'s keys and a
    ``[federated]`` table (found by ``_config_file``); everything must be explicit there (each machine resolves it
    alone). A ``recipe`` key (``recipe = "head"``) is the base of the other keys, as in ``zo-edge train --config``.

    ``run``: the Flower run id. It names the Setup's run, so that a process that handles several messages of one run
    keeps its clients (``_CLIENTS`` is keyed by the Setup) instead of a fresh client per message."""
    from zo_edge.config import TrainConfig, load_toml

    path = run_config.get("config")
    if not path:
        raise FederatedError("flwr run needs --run-config 'config=\"fed.toml\"' (zo-edge train keys + [federated])")
    path = _config_file(str(path))
    data = dict(load_toml(path))
    fed = FederatedConfig(**data.pop("federated", {}))
    # the TOML's tables as the flat flags from_sources takes (it applies a recipe under them; from_dict does not)
    top, method, knobs, optim = TrainConfig._split(data, f"{path}: ")
    flags = {**top, **optim, **knobs, **({"method": method} if method else {})}
    cfg = TrainConfig.from_sources(None, flags)
    if cfg.template == "auto" or not cfg.max_len:
        raise FederatedError(f"{path}: set template and max_len explicitly (every machine must build the same task)")
    if run is None:
        return Setup(cfg.to_dict(), asdict(fed))
    return Setup(cfg.to_dict(), asdict(fed), run=f"flwr-run-{run}")


def _evaluate(p) -> dict[str, float]:
    """The server's held-out score of the global model (``eval_examples`` of the test split)."""
    from zo_edge.train import evaluate_on

    return evaluate_on(p, p.data.test, p.cfg.eval_examples).summary()


# --- in-process grid ------------------------------------------------------------------------------------------------
class LocalGrid(Grid):
    """A Grid that delivers each Message to the ClientApp in this process, through Flower's own serialisation
    (message_to_proto / message_from_proto, both ways). A client that raises gives no reply (a dropout)."""

    def __init__(self, app: ClientApp, n: int) -> None:
        self.app = app
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": n},
                state=RecordDict(),
                run_config={},
            )  # fmt: skip
            for i in range(n)
        }
        self._run = None
        self._replies: dict[str, Message] = {}
        #: what each failing client raised (an injected dropout, or a bug worth seeing)
        self.errors: list[str] = []

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = mid = uuid.uuid4().hex
            ids.append(mid)
            delivered = message_from_proto(message_to_proto(m))
            try:
                reply = self.app(delivered, self.contexts[m.metadata.dst_node_id])
            except Exception as e:  # noqa: BLE001  (a client that fails mid-round simply does not answer)
                self.errors.append(f"node {m.metadata.dst_node_id}: {type(e).__name__}: {e}")
                continue
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self._replies[mid] = message_from_proto(message_to_proto(reply))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


# --- simulation -----------------------------------------------------------------------------------------------------
def simulate(
    cfg,
    fed: FederatedConfig,
    *,
    on_round: Callable | None = None,
    evaluate: bool | Callable = True,
    prepared=None,
) -> FedServer:
    """Run a federation of ``fed.clients`` simulated clients; returns the server (its history, logs, state).

    ``evaluate``: score the global model on the held-out split (True), not at all, or with this callable
    (``Prepared -> dict``); ``prepared``: the server's ``zo_edge.train.prepare(cfg)``, if already made (its oracle
    must hold the base model; a benchmark reuses one prefix cache across cells)."""
    from zo_edge.federated.node import check_federable
    from zo_edge.train import prepare

    check_federable(cfg)
    prepared = prepared or prepare(cfg)  # resolves --template auto / --max-len 0 once; clients get the result
    setup = Setup(cfg.to_dict(), asdict(fed))
    scorer = evaluate if callable(evaluate) else _evaluate if evaluate else None
    server = FedServer(setup, prepared, evaluate=scorer)
    server_app = make_server_app(server, cfg.out, on_round)
    client_app = make_client_app(setup)
    if fed.engine == "inprocess":
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        ctx = Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={})
        server_app(LocalGrid(client_app, fed.clients), ctx)
    else:
        from flwr.simulation import run_simulation

        threads = max(cfg.threads, 1)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=fed.clients,
            backend_config={
                "client_resources": {"num_cpus": threads, "num_gpus": 0.0},
                "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
            },
        )
        if not server.rounds and cfg.steps:
            raise FederatedError("the Flower simulation ended without running a round (see its log above)")
    return server


def save_run(server: FedServer, out: str | Path) -> None:
    """The run folder: ``federated.json`` (per-round log, bytes, history) and the global state as a checkpoint
    (``zo-edge eval --run`` reads it like a ``zo-edge train`` run)."""
    from runtime import checkpoint, contract
    from runtime.atomic import atomic_write_json
    from zo_edge.federated.node import trained_arrays

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {**server.cfg.to_dict(), "federated": server.setup.fed})
    result = server.result()
    result["initial_eval"] = getattr(server, "initial_eval", {})
    atomic_write_json(out / "federated.json", result)
    m, o = server.method, server.oracle
    arrays = trained_arrays(o, m)
    meta = {
        "data": {},
        "config": server.cfg.to_dict(),
        "best": float("-inf"),
        "method": m.name,
        contract.META_FORMAT_VERSION: contract.CHECKPOINT_FORMAT_VERSION,
        contract.META_WEIGHTS_SHA256: o.manifest.weights_sha256,
    }
    checkpoint.save_checkpoint(out, len(server.rounds), arrays, meta, keep=1)
    checkpoint.save_named(out, "best", arrays, meta)


# ``flwr run`` loads these (pyproject [tool.flwr.app.components]): everything comes from the run config
server_app = make_server_app()
client_app = make_client_app()
