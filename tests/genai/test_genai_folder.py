"""``zo-edge merge --format genai`` on a tiny random Llama, checked by the real onnxruntime-genai.

    make test-genai        # or: .venv/bin/python -m pytest tests/genai -q -m "not slow" (after make test-genai)

Two hand-made runs on one base (as in tests/export/test_merge.py, so the trained state is exact): run A has an
adapter on every targeted linear (ranks 1..3, padded to one r), run B on the second block only. Both are merged
with ``--format genai,hf``. One ``og.Model`` of A's genai folder, with A's and B's ``.onnx_adapter`` loaded into one
``og.Adapters``, generates greedily with no adapter, A's and B's active in turn; the references are torch
``generate`` on the untouched base and on each run's merged HF model (zo-edge's merge, an independent path: ΔW
folded into the weights). Tokens must be equal and the prompt's last-position logits close (1e-4); A's adapter must
change the tokens (else the check is vacuous). B's folder must be A's byte for byte: one base for every run.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from export.formats import FormatError
from export.formats.genai_folder import ADAPTER_FILE, GENAI_DIR, LORA_A, LORA_B
from export.merge import merge_run
from runtime import checkpoint, contract

PROMPTS = [[1, 52, 130, 77, 501, 42], [17, 406, 28, 311], [201, 5, 99, 345, 7, 64, 300]]
MAX_LENGTH = 16


def _run_folder(tmp: Path, model_dir: Path, arrays: dict[str, np.ndarray], name: str) -> Path:
    run = tmp / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(model_dir)}))
    checkpoint.save_checkpoint(run, 1, arrays, {})
    return run


def _adapters(manifest: contract.Manifest, seed: int, only: str | None = None) -> dict[str, np.ndarray]:
    """Checkpoint arrays of adapters Q [d_out, k], P [d_in, k] (ranks 1..3 by layer) on the linears whose name
    contains ``only`` (all when None), scaled to move the logits visibly."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, lin in enumerate(manifest.linears):
        if only is None or only in lin.name:
            k = 1 + i % 3
            arrays[contract.adapter_q_name(lin.name)] = (0.5 * rng.standard_normal((lin.d_out, k))).astype(np.float32)
            p = rng.standard_normal((lin.d_in, k)) / np.sqrt(lin.d_in)
            arrays[contract.adapter_p_name(lin.name)] = p.astype(np.float32)
    return arrays


def _torch_greedy(model, prompts: list[list[int]]) -> tuple[list[list[int]], list[np.ndarray]]:
    import torch

    tokens, logits = [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            logits.append(model(input_ids=ids).logits[0, -1].numpy())
            out = model.generate(ids, do_sample=False, max_length=MAX_LENGTH, attention_mask=torch.ones_like(ids))
            tokens.append(out[0].tolist())
    return tokens, logits


def _builder_name(layer: str, suffix: str) -> str:
    """The builder's node scope of an HF linear (self_attn is 'attn' there), as its initializer names show."""
    return layer.replace(".self_attn.", ".attn.") + suffix


@pytest.fixture(scope="module")
def merged(genai_run, genai_tiny, tmp_path_factory):
    from export.formats.genai_folder import _check_builder

    _check_builder()
    tmp = tmp_path_factory.mktemp("genai-runs")
    manifest = contract.Manifest.load(genai_tiny.dir)
    out = {}
    for name, arrays in (("a", _adapters(manifest, 0)), ("b", _adapters(manifest, 1, only="layers.1."))):
        run = _run_folder(tmp, genai_tiny.dir, arrays, f"run-{name}")
        out[name] = (merge_run(run, tmp / f"merged-{name}", which="latest", formats=["genai", "hf"]), arrays)
    return manifest, out


def test_folder_layout_and_adapter_file(merged):
    import onnx
    import onnxruntime as ort

    manifest, runs = merged
    (a_dir, a_arrays), (b_dir, b_arrays) = runs["a"], runs["b"]
    folder = a_dir / GENAI_DIR
    for name in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", ADAPTER_FILE):
        assert (folder / name).is_file(), f"{name} missing from the genai folder"
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    inputs = {i.name: i for i in graph.input}
    inits = {i.name: i for i in graph.initializer}
    for lin in manifest.linears:  # a LoRA input pair on every targeted linear, empty by default
        for suffix, empty_axis in ((LORA_A, 1), (LORA_B, 0)):
            name = _builder_name(lin.name, suffix)
            assert name in inputs, f"no LoRA input {name}"
            assert inits[name].dims[empty_axis] == 0, f"{name}'s default is not empty: {list(inits[name].dims)}"
            assert inputs[name].type.tensor_type.shape.dim[empty_axis].dim_param, f"{name}'s rank is not symbolic"
    # One base for every run: B's folder (other adapter, other layers) is A's, byte for byte.
    for name in ("model.onnx", "model.onnx.data", "genai_config.json"):
        assert filecmp.cmp(folder / name, b_dir / GENAI_DIR / name, shallow=False), f"{name} differs between runs"
    # The adapter files hold exactly the trained layers: A' = P [d_in, k], B' = Qᵀ [k, d_out] (zero-padded to r).
    for arrays, run_dir in ((a_arrays, a_dir), (b_arrays, b_dir)):
        params = ort.AdapterFormat.read_adapter(str(run_dir / GENAI_DIR / ADAPTER_FILE)).get_parameters()
        params = {k: v.numpy() for k, v in params.items()}
        trained = [lin for lin in manifest.linears if contract.adapter_q_name(lin.name) in arrays]
        assert len(params) == 2 * len(trained), f"{len(params)} adapter params for {len(trained)} trained layers"
        for lin in trained:
            q, p = arrays[contract.adapter_q_name(lin.name)], arrays[contract.adapter_p_name(lin.name)]
            a_, b_ = params[_builder_name(lin.name, LORA_A)], params[_builder_name(lin.name, LORA_B)]
            k = q.shape[1]
            np.testing.assert_allclose(a_[:, :k], p, rtol=0, atol=0, err_msg=lin.name)
            np.testing.assert_allclose(b_[:k], q.T, rtol=0, atol=0, err_msg=lin.name)
            assert not np.any(a_[:, k:]) and not np.any(b_[k:]), f"{lin.name}: padding is not zero"


def test_generation_matches_merged_and_base(merged, genai_run, genai_tiny, without_final_eos, tmp_path):
    from transformers import AutoModelForCausalLM

    _, runs = merged
    folder = runs["a"][0] / GENAI_DIR
    request = {
        "folder": str(folder),
        "adapters": {name: str(d / GENAI_DIR / ADAPTER_FILE) for name, (d, _) in runs.items()},
        "active": [None, "a", "b", None],  # off, A, B (swapped on one generator model), off again
        "prompts": PROMPTS,
        "max_length": MAX_LENGTH,
    }
    got = genai_run(request, tmp_path)
    refs = {"": _torch_greedy(genai_tiny.reference, PROMPTS)}
    for name, (d, _) in runs.items():
        refs[name] = _torch_greedy(AutoModelForCausalLM.from_pretrained(d / "hf").float().eval(), PROMPTS)
    for name, (tokens, logits) in refs.items():
        tokens = [without_final_eos(t, p, got["eos"]) for t, p in zip(tokens, PROMPTS, strict=True)]
        assert got[name]["tokens"] == tokens, f"adapter {name or 'off'}: genai {got[name]['tokens']} != {tokens}"
        np.testing.assert_allclose(np.array(got[name]["logits"]), np.array(logits), rtol=1e-4, atol=1e-4)
    assert refs["a"][0] != refs[""][0], "run A's adapter does not change greedy tokens: the check would be vacuous"


def test_int4_base_with_peft_alongside(genai_run, genai_tiny, without_final_eos, tmp_path):
    """INT4 base (where LOZO/SubZero/AGZO train adapters): the genai folder is the dequantized base at fp32 plus
    LoRA inputs. Merged together with --format peft (which writes the dequantized base as hf-base/ beside, after
    genai built it in scratch): genai off = torch on hf-base/, adapter on = torch on the merged hf/."""
    from transformers import AutoModelForCausalLM

    manifest = contract.Manifest.load(genai_tiny.int4_dir)
    run = _run_folder(tmp_path, genai_tiny.int4_dir, _adapters(manifest, 2), "run-int4")
    notes: list[str] = []
    out = merge_run(run, tmp_path / "merged", which="latest", formats=["genai", "hf", "peft"], notes=notes)
    assert any("INT4" in n for n in notes), notes
    request = {
        "folder": str(out / GENAI_DIR),
        "adapters": {"c": str(out / GENAI_DIR / ADAPTER_FILE)},
        "active": [None, "c"],
        "prompts": PROMPTS,
        "max_length": MAX_LENGTH,
    }
    got = genai_run(request, tmp_path)
    for name, hf in (("", out / "hf-base"), ("c", out / "hf")):
        tokens, logits = _torch_greedy(AutoModelForCausalLM.from_pretrained(hf).float().eval(), PROMPTS)
        tokens = [without_final_eos(t, p, got["eos"]) for t, p in zip(tokens, PROMPTS, strict=True)]
        assert got[name]["tokens"] == tokens, f"INT4, adapter {name or 'off'}: {got[name]['tokens']} != {tokens}"
        np.testing.assert_allclose(np.array(got[name]["logits"]), np.array(logits), rtol=1e-4, atol=1e-4)
    assert got["c"]["tokens"] != got[""]["tokens"], "the INT4 run's adapter does not change greedy tokens"


def test_dense_run_and_missing_builder_are_one_line(genai_tiny, tmp_path, monkeypatch):
    import export.formats.genai_folder as genai_folder

    manifest = contract.Manifest.load(genai_tiny.dir)
    w = manifest.linears[0].weight
    spec = next(s for s in manifest.params if s.name == w)
    dense = {contract.checkpoint_param_name(w): np.zeros(spec.shape, np.float32)}
    run = _run_folder(tmp_path, genai_tiny.dir, dense, "dense")
    monkeypatch.setattr(genai_folder, "_check_builder", lambda: None)
    with pytest.raises(FormatError, match="--format genai: .* in place") as err:
        merge_run(run, tmp_path / "out", which="latest", formats=["genai"])
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    monkeypatch.setattr(genai_folder.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FormatError, match=r"pip install \"zo-edge\[genai\]\""):
        genai_folder._check_builder()
    assert not (tmp_path / "out").exists()


def test_base_folder_built_in_scratch_is_copied_where_a_later_writer_asks(tmp_path, monkeypatch):
    """genai (registered before peft) builds the base in scratch; peft on an INT4 base then asks for it at
    out/hf-base, and must get it there, not the scratch path that is removed after the merge."""
    import export.merge

    def fake_write_hf(path: Path, *args, **kwargs) -> None:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")

    monkeypatch.setattr(export.merge, "_write_hf", fake_write_hf)
    ctx = export.merge.MergeContext.__new__(export.merge.MergeContext)
    ctx.scratch, ctx.model_dir, ctx.manifest, ctx._hf = tmp_path / "scratch", None, None, {}
    assert ctx.base_hf() == tmp_path / "scratch" / "base-hf"
    assert ctx.base_hf(tmp_path / "out" / "hf-base") == tmp_path / "out" / "hf-base"
    assert (tmp_path / "out" / "hf-base" / "config.json").is_file()
