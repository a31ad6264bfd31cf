"""Federated ZO fine-tuning on Flower: seeds and scalars cross the wire, never weights or data.

    zo-edge federate --model artifacts/tiny --clients 4 --partition skew --method zo-act --steps 30 --out runs/fed
    flwr run . --run-config 'config="fed.toml"'      # real machines: see README "Federated fine-tuning"

A ZO step is a pure function of (seed, t, k, layer) and one scalar per query (runtime/rng.py, runtime/method.py
``probe``/``replay``), so any replica that knows the scalars lands on the same bits. The protocol, one round per
training step t (``--steps`` rounds; the optimizer's schedule runs over them as in ``zo-edge train``), or, for a
method whose queries run in turn (MeZO: query k probes the θ that query k - 1's Adam update left; ``--recipe head``
is MeZO with 32 queries), one round per query: q rounds a step, each probing one seed on the batch the client drew
for that step, so the global stream is the centralised run's, query for query::

    server -> client   round t, the (t_i, g_i) history entries since the client's last confirmed index,
                       the index it must reach (and, to a client at index 0 of a ZO-Act run, the bases A_g)
    client             replays the entries with ``method.replay`` (the same arithmetic, in the same order, as the
                       centralised loop), checksums its trained state, draws its next local batch and runs
                       ``method.probe(t)``: per query k, g_k = (f(+μ) - f(-μ)) / 2μ along the perturbation of
                       (seed, t, k): 2 forwards per query
    client -> server   its index and checksum, g_1..g_q, its example count n
    server             drops replies that are errors, malformed (shape, non-finite, another round or query count)
                       or whose checksum differs from its own at that index (that client is told to resync: it
                       rebuilds from the base and replays the whole history), averages g_k over the rest weighted
                       by n, replays the result into its own copy (which also evaluates) and appends (t, g) to the
                       history

Only the global (seed, t, g) stream defines the model: the global model is the base plus the replayed history. A
client that drops out mid-round changes nothing (the round aggregates who answered; if nobody did, the round
applies no update, as a skipped step). A late joiner starts at index 0 and replays everything; with
``--snapshot-every N`` the server snapshots its state every N rounds and keeps only the entries since the previous
snapshot (at most 2N), so its memory stays bounded: a client at most one period behind (every client, every round)
still replays, one further behind (a late joiner, a resync) gets the snapshot and the entries since (bytes counted).

Simulated clients in one process share one copy of the model's sessions and prefix cache (a training row's frozen
stack runs once); a method that changes bound weights swaps each client's own copy of them in around its messages
(``--layers head``: the final norm's gain), and the checksums and snapshots cover only what training can change.

ZO-Act's activation basis is computed federatedly once, before round 0: per power-iteration sweep the server sends
Ω_g (d_in x (r + p) per group) and each client returns Σ over its calibration batches of Xᵀ(X Ω_g) in float64; the
server sums them and runs ``calibrate_bases`` unchanged. What that reveals: (XᵀX) Ω is the client's activation
second moment seen through r + p directions, and after the sweeps the server knows the top of each layer's
activation spectrum for that client; at the first block X holds token embeddings, so it leaks which tokens the
client's text is heavy in (a weighted bag of words). ``--sketch-noise σ`` adds Gaussian noise of σ times each
sketch's RMS on the client before it leaves (a privacy knob, not a DP guarantee: no clipping or accounting).
AGZO, FZOO and Zoop are refused in one line (``not_federated`` on the method says why).

Files: ``node.py`` (the protocol: FedServer, FedClient, validation, checksums; no Flower import),
``flower.py`` (the ServerApp/ClientApp, the in-process grid, the simulation, wire-byte counting).
"""

from __future__ import annotations

__all__: list[str] = []
