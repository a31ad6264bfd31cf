"""Provider options (``[PROVIDER:]KEY=VALUE``), the precision each provider reports, and per-provider options
reaching GraphSession (CPU only here; OpenVINO's side runs in tests/openvino).

    python -m pytest tests/runtime/test_providers.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ZoEdgeError
from runtime.providers import ProviderError, computed_precision, parse_provider_options
from runtime.session import GraphSession


def test_unprefixed_options_go_to_the_first_provider_and_every_provider_gets_an_entry():
    got = parse_provider_options(["precision=FP32", "cpu:foo=1"], ["openvino", "cpu"])
    assert got == {"openvino": {"precision": "FP32"}, "cpu": {"foo": "1"}}
    assert parse_provider_options([], ["cpu", "openvino"]) == {"cpu": {}, "openvino": {}}


def test_prefixes_by_short_or_full_name_values_may_hold_colons_and_equals_last_wins():
    got = parse_provider_options(
        [
            "OpenVINOExecutionProvider:device_type=HETERO:GPU,CPU",
            "openvino:load_config=a=b",
            "openvino:precision=FP16",
            "openvino:precision=FP32",
        ],
        ["cpu", "openvino"],
    )
    assert got["openvino"] == {"device_type": "HETERO:GPU,CPU", "load_config": "a=b", "precision": "FP32"}
    assert got["cpu"] == {}


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("precision", "is not [PROVIDER:]KEY=VALUE"),
        ("=FP32", "is not [PROVIDER:]KEY=VALUE"),
        (":precision=FP32", "is not [PROVIDER:]KEY=VALUE"),
        ("cuda:device_id=0", "names provider 'cuda', which is not among the providers of this run (cpu, openvino)"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec, needle):
    with pytest.raises(ZoEdgeError) as e:
        parse_provider_options([spec], ["cpu", "openvino"])
    assert isinstance(e.value, ProviderError)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_no_provider_is_an_error():
    with pytest.raises(ProviderError, match="no provider"):
        parse_provider_options(["precision=FP32"], [])


@pytest.mark.parametrize(
    "provider, options, dtype, want",
    [
        ("cpu", {}, "fp32", "fp32"),
        ("cpu", {}, "int4", "fp32 (int4 weights)"),
        ("CUDAExecutionProvider", {"device_id": "1"}, "fp32", "fp32"),
        ("openvino", {}, "fp32", "fp32 (CPU default)"),
        ("openvino", {"device_type": "GPU.0"}, "fp32", "fp16 (GPU default)"),
        ("openvino", {"device_type": "NPU"}, "fp32", "fp16 (NPU default)"),
        ("openvino", {"precision": "fp16"}, "fp32", "fp16"),
        ("openvino", {"precision": "ACCURACY", "device_type": "GPU"}, "fp32", "fp32"),
        ("qnn", {}, "fp32", "unknown"),
    ],
)
def test_computed_precision(provider, options, dtype, want):
    assert computed_precision(provider, options, dtype) == want


@pytest.fixture(scope="module")
def llama(tiny_export):
    return tiny_export("llama")


def test_graph_session_takes_per_provider_options_and_reports_precision(llama, tiny):
    """Options for providers outside the chain are dropped (a fallback chain may not reach them); a flat dict is
    the first provider's."""
    flat = GraphSession(llama.dir, "cpu", provider_options={"arena_extend_strategy": "kSameAsRequested"})
    per_provider = {"cpu": {"arena_extend_strategy": "kSameAsRequested"}, "openvino": {"x": "1"}}
    nested = GraphSession(llama.dir, "cpu", provider_options=per_provider)
    for s in (flat, nested):
        assert s.provider_options == {"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}}
        assert s.precisions == {"CPUExecutionProvider": "fp32"} and s.precision == "fp32"
    batch = tiny.make_batch(llama.manifest.vocab_size)
    np.testing.assert_array_equal(flat.losses(batch), GraphSession(llama.dir, "cpu").losses(batch))
