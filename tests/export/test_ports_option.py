"""``zo-edge export --ports``: exports without the port families the chosen methods never use (issue #14, item 4).

    python -m pytest tests/export/test_ports_option.py -q

Against independent references: an export with ``--ports none`` scores rows and candidates as the full export with
every port at its off value does, and as the torch model; MeZO's steps on it are the full export's bit for bit (the
left-out ports only ever added exact zeros, and onnxruntime's kernels are deterministic on one thread); each
registered method trains on an export with exactly its declared ``ports`` (so a declaration that forgot a family
fails here), and is refused before any forward, in one line naming it, the missing family and ``--ports``, on an
export one family short. The manifest field round-trips and an old manifest without it means every family
(tests/runtime/test_ports_manifest.py).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from export.config import ExportConfig, ExportConfigError
from runtime import contract
from runtime.batch import Batch
from runtime.layers import n_blocks
from runtime.loop import TrainingStopped, load_trained
from runtime.method import METHODS, MethodError, check_export
from runtime.oracle import Oracle, lm_objective
from runtime.prefix_cache import make_oracle
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods import get_method


def _spec(families) -> str:
    return ",".join(families) or "none"


def _inputs(path) -> set[str]:
    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def _port_inputs(path) -> set[str]:
    """The graph's inputs other than the bound parameters."""
    return {n for n in _inputs(path) if not n.startswith(contract.param_name(""))}


def _outputs(path) -> set[str]:
    return {o.name for o in onnx.load(str(path), load_external_data=False).graph.output}


def _method(name: str, seed: int = 0, **knobs):
    cls = get_method(name)
    schedule = optim.constant(1e-3)
    m = cls(cls.Config(**knobs), optim.sgd(schedule), schedule)
    return m


# --- the flag ------------------------------------------------------------------------------------------------
def test_the_spec_parses_and_a_bad_family_is_one_line_before_any_work(capsys):
    assert ExportConfig().port_families == list(contract.PORT_FAMILIES)
    assert ExportConfig(ports="none").port_families == []
    assert ExportConfig(ports=" Probe , lowrank").port_families == ["lowrank", "probe"]  # manifest order
    with pytest.raises(ExportConfigError, match="'lora' is not a port family") as e:
        ExportConfig(ports="lowrank,lora")
    assert "\n" not in str(e.value) and "--ports" in str(e.value)
    from zo_edge.cli import main

    # the model does not exist: the flag is refused before anything is resolved or loaded
    assert main(["export", "/no/such/model", "--out", "/no/such/out", "--ports", "noize"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--ports" in err and "'noize' is not a port family" in err and "\n" not in err, err


# --- the graphs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("families", [[], ["lowrank"], ["noise", "probe"], list(contract.PORT_FAMILIES)], ids=_spec)
def test_every_graph_has_exactly_the_chosen_families(families, tiny_export):
    exp = tiny_export("llama", ports=_spec(families))
    m = exp.manifest
    assert m.ports == families
    assert json.loads((exp.dir / contract.MANIFEST_FILE).read_text())["ports"] == families
    assert m.linears and m.groups, "the targeted layers are listed whatever ports they have"
    from runtime.layers import block_of

    base = {contract.INPUT_IDS, contract.INPUT_ATTENTION_MASK, contract.INPUT_LOSS_MASK, contract.INPUT_CANDIDATE_IDS}
    probes_in = (contract.probe_omega, contract.probe_sketch_omega, contract.probe_act_rows)
    for graph, start in [(contract.GRAPH_FILE, 0), *((contract.suffix_graph_file(s), s) for s in m.splits)]:
        linears = [s.name for s in m.linears if block_of(s.name) >= start]
        groups = [g.name for g in m.groups if block_of(g.name) >= start]
        inputs = {
            contract.PORTS_LOWRANK: [f(x) for x in linears for f in (contract.port_p, contract.port_q)],
            contract.PORTS_NOISE: [contract.port_noise(x) for x in linears],
            contract.PORTS_PROBE: [contract.INPUT_PROBE_ROWS] * bool(groups)
            + [f(g) for g in groups for f in probes_in],
        }
        names = _port_inputs(exp.dir / graph)
        want = base | ({contract.INPUT_HIDDEN} if start else set()) | {n for f in families for n in inputs[f]}
        assert names == want, f"{graph} with --ports {_spec(families)}: {sorted(names ^ want)}"
        probes = {f(g) for g in groups for f in (contract.probe_basis, contract.probe_gram, contract.probe_sketch)}
        assert (probes <= _outputs(exp.dir / graph)) == (contract.PORTS_PROBE in families or not probes), graph
    for s in m.splits:  # the frozen prefix never has ports
        assert _port_inputs(exp.dir / contract.prefix_graph_file(s)) == {
            contract.INPUT_IDS,
            contract.INPUT_ATTENTION_MASK,
        }


# --- scores: no ports == every port off == torch --------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_no_ports_scores_equal_the_full_export_with_ports_off_and_torch(model_type, tiny_export, tiny):
    full, bare = tiny_export(model_type), tiny_export(model_type, ports="none")
    assert bare.manifest.weights_sha256 == full.manifest.weights_sha256, "the same base"
    batch = tiny.make_batch(tiny.VOCAB, seed=4, batch=4, seq=10)
    batch = Batch(batch.input_ids, batch.attention_mask, batch.loss_mask, np.array([3, 5, 7, 11], np.int64))
    fetch = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT, contract.OUTPUT_ROW_CANDIDATE_LOGP)
    f = GraphSession(full.dir).forward(batch, fetch=fetch)  # every port at its bound off default
    b = GraphSession(bare.dir).forward(batch, fetch=fetch)
    for name in fetch:
        np.testing.assert_allclose(b[name], f[name], rtol=1e-6, atol=1e-6, err_msg=name)
    ref_nll, ref_count = tiny.torch_row_losses(bare.reference, batch)
    np.testing.assert_allclose(b[contract.OUTPUT_ROW_NLL], ref_nll.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(b[contract.OUTPUT_ROW_COUNT], ref_count.numpy())


def test_the_head_split_and_candidates_head_score_the_same_without_ports(tiny_export, tiny):
    full, bare = tiny_export("llama"), tiny_export("llama", ports="none")
    assert bare.manifest.has(contract.FEATURE_CANDIDATE_HEAD) and bare.manifest.splits == full.manifest.splits
    batch = tiny.make_batch(tiny.VOCAB, seed=7, batch=5, seq=9)
    one_row = np.zeros_like(batch.loss_mask)
    one_row[:, -1] = 1
    batch = Batch(batch.input_ids, batch.attention_mask, one_row, np.array([3, 5, 11]))
    head = [n_blocks(full.manifest)]
    scores = []
    for exp in (full, bare):
        oracle, split = make_oracle(exp.dir, blocks=head)
        assert split == head[0] and oracle.candidate_head is not None
        scores.append(oracle.run(batch)[contract.OUTPUT_ROW_CANDIDATE_LOGIT])
    np.testing.assert_array_equal(scores[1], scores[0])


# --- MeZO on it is MeZO on the full export ----------------------------------------------------------------------
@pytest.mark.parametrize("layers", ["all", "head"])
def test_mezo_steps_equal_the_full_exports_bit_for_bit(layers, tiny_export, tiny):
    """Bit for bit, not to a tolerance: without ports a targeted linear is y = x W; with them it is
    (x W + (x P) Qᵀ) + noise with P, Q of rank 0 and noise [1, 1, 1] zeros, and adding exact zeros changes no float
    (onnxruntime fuses neither Add into the MatMul: it is not a constant). One intra-op thread, so the kernels'
    reductions run in the same order in both sessions."""
    full, bare = tiny_export("llama"), tiny_export("llama", ports="none")
    batch = tiny.make_batch(tiny.VOCAB, seed=5, batch=4, seq=9)
    blocks = None if layers == "all" else [n_blocks(full.manifest)]
    losses, params = [], []
    for exp in (full, bare):
        oracle, _ = make_oracle(exp.dir, blocks=blocks, threads=1)
        method = _method("mezo")
        method.init(oracle, 0)
        losses.append([method.step(oracle, batch, lm_objective, t).loss for t in range(4)])
        params.append({k: v.copy() for k, v in oracle.trained.arrays(include_params=True).items()})
    assert losses[1] == losses[0]
    assert params[1].keys() == params[0].keys()
    moved = [k for k in params[0] if not np.array_equal(params[0][k], full_params(full)[k])]
    assert moved, "the steps must move the weights"
    for k in params[0]:
        np.testing.assert_array_equal(params[1][k], params[0][k], err_msg=k)


def full_params(exp) -> dict[str, np.ndarray]:
    from runtime.safetensors_io import read_safetensors_writable

    arrays = read_safetensors_writable(exp.dir / contract.PARAMS_FILE)
    return {contract.checkpoint_param_name(k): v for k, v in arrays.items()}


# --- every method: runs on exactly its ports, refused one family short -----------------------------------------
def _knobs(name: str) -> dict:
    return {"calib_batches": 1} if "calib_batches" in get_method(name).Config.__dataclass_fields__ else {}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_on_exactly_its_ports(name, tiny_export, tiny):
    """The ``ports`` declaration is complete: on an export with only those families the method initialises,
    calibrates and steps (a family it uses but did not declare would be a missing graph input here)."""
    cls = get_method(name)
    exp = tiny_export("llama", ports=_spec([f for f in contract.PORT_FAMILIES if f in cls.ports]))
    oracle = Oracle(GraphSession(exp.dir))
    method = _method(name, **_knobs(name))
    batch = tiny.make_batch(tiny.VOCAB, seed=2, batch=4, seq=9)
    method.init(oracle, 0)
    method.calibrate(oracle, [batch])
    reports = [method.step(oracle, batch, lm_objective, t) for t in range(2)]
    assert all(np.isfinite(r.loss) and not r.skipped for r in reports), reports


@pytest.mark.parametrize(
    "name, family",
    [(n, f) for n in sorted(METHODS) for f in contract.PORT_FAMILIES if f in get_method(n).ports],
)
def test_a_method_is_refused_one_family_short_before_any_forward(name, family, tiny_export):
    cls = get_method(name)
    have = [f for f in contract.PORT_FAMILIES if f in cls.ports and f != family]
    exp = tiny_export("llama", ports=_spec(have))
    with pytest.raises(MethodError) as e:
        check_export(cls, exp.manifest, where=str(exp.dir))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{name} needs the {family} port"), msg
    assert f"--ports {_spec(have)}" in msg and str(exp.dir) in msg, msg
    want = ",".join(f for f in contract.PORT_FAMILIES if f in cls.ports)
    assert f"zo-edge export --ports {want}`" in msg, msg
    oracle = Oracle(GraphSession(exp.dir))
    with pytest.raises(MethodError, match=f"{name} needs the {family} port"):
        _method(name, **_knobs(name)).init(oracle, 0)  # library use: init refuses too
    assert oracle.forwards == 0


def test_train_refuses_before_loading_anything(tiny_export, tmp_path, capsys, monkeypatch):
    """``zo-edge train`` on a no-ports export: a low-rank method is one line, exit 2, before a session is even
    built (the prompt search would otherwise run dev forwards first); MeZO passes the check."""
    exp = tiny_export("llama", ports="none")

    def no_session(*a, **k):
        raise AssertionError("a session was built before the method was checked against the export")

    monkeypatch.setattr(GraphSession, "__init__", no_session)
    from zo_edge.cli import main

    argv = ["train", "--model", str(exp.dir), "--task", "rotten-tomatoes", "--out", str(tmp_path / "r")]
    assert main([*argv, "--method", "lozo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lozo needs the lowrank port" in err and "--ports" in err, err
    assert main([*argv, "--recipe", "every-block"]) == 2
    err = capsys.readouterr().err.strip()
    assert "zo-act (--recipe every-block) needs the lowrank, probe port families" in err, err
    from zo_edge.config import TrainConfig
    from zo_edge.train import prepare

    with pytest.raises(AssertionError, match="a session was built"):  # mezo passes: prepare goes on to load
        prepare(TrainConfig(model=str(exp.dir), method="mezo", task="rotten-tomatoes", out=str(tmp_path / "m")))


# --- a trained adapter and the cross-provider report -------------------------------------------------------------
def test_a_runs_adapter_is_refused_on_an_export_without_lowrank(tiny_export):
    exp = tiny_export("llama", ports="none")
    oracle = Oracle(GraphSession(exp.dir))
    spec = exp.manifest.linears[0]
    arrays = {
        contract.adapter_q_name(spec.name): np.zeros((spec.d_out, 2), np.float32),
        contract.adapter_p_name(spec.name): np.zeros((spec.d_in, 2), np.float32),
    }
    with pytest.raises(TrainingStopped, match="the run's adapter needs the lowrank port") as e:
        load_trained(oracle, arrays)
    assert "\n" not in str(e.value) and "--ports" in str(e.value)
    params = {contract.checkpoint_param_name(p.name): oracle.params[p.name].copy() for p in exp.manifest.params}
    load_trained(oracle, params)  # a MeZO run's weights need no port


def test_cross_provider_report_has_no_layer_part_without_probes(tiny_export, tiny):
    from zo_edge.cross_provider import layer_divergence

    batch = tiny.make_batch(tiny.VOCAB, seed=1)
    bare = Oracle(GraphSession(tiny_export("llama", ports="lowrank,noise").dir))
    assert layer_divergence({"cpu": bare}, batch) == []
    full = Oracle(GraphSession(tiny_export("llama").dir))
    assert len(layer_divergence({"cpu": full}, batch)) == len(full.manifest.groups)
