"""The manifest's ``ports`` field (runtime/contract.py): round trip, old manifests, damaged values, the refusal line.

    python -m pytest tests/runtime/test_ports_manifest.py -q

No torch and no export: manifests are built from a minimal dict here (tests/export/test_ports_option.py exports).
"""

from __future__ import annotations

import json

import pytest

from runtime import contract
from runtime.contract import Manifest, ManifestError


def _manifest_dict(**extra) -> dict:
    d = {
        "format_version": contract.FORMAT_VERSION,
        "architecture": "llama",
        "model_type": "llama",
        "source": "<test>",
        "weights_sha256": "0" * 64,
        "dtype": "int4",
        "int4_block_size": 32,
        "basis_rank": 1,
        "power_iters": 3,
        "vocab_size": 97,
        "pad_token_id": 0,
        "bos_token_id": None,
        "eos_token_id": None,
        "tokenizer_files": [],
        "hf_config": {},
    }
    d.update(extra)
    return d


@pytest.mark.parametrize("ports", [[], ["noise"], ["lowrank", "probe"], list(contract.PORT_FAMILIES)])
def test_ports_round_trip(ports, tmp_path):
    m = Manifest.from_dict(_manifest_dict(ports=ports))
    assert m.ports == ports
    (tmp_path / contract.MANIFEST_FILE).write_text(m.to_json())
    again = Manifest.load(tmp_path)
    assert again.ports == ports and again == m
    for family in contract.PORT_FAMILIES:
        assert again.has_ports(family) == (family in ports)


def test_an_old_manifest_without_the_field_has_every_family(tmp_path):
    d = _manifest_dict()
    assert "ports" not in d
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps(d))
    m = Manifest.load(tmp_path)
    assert m.ports == list(contract.PORT_FAMILIES)
    assert all(m.has_ports(f) for f in contract.PORT_FAMILIES)


@pytest.mark.parametrize(
    "ports, problem",
    [("all", "must be a list"), (["lora"], "must be one of lowrank, noise, probe"), (["noise", "noise"], "twice")],
)
def test_a_damaged_ports_field_is_one_line(ports, problem):
    with pytest.raises(ManifestError, match=problem) as e:
        Manifest.from_dict(_manifest_dict(ports=ports), "m/manifest.json")
    assert "\n" not in str(e.value) and "m/manifest.json" in str(e.value)


def test_the_refusal_names_the_family_and_the_flag_that_adds_it():
    msg = contract.ports_missing("zoop", {"noise"}, ["probe"], "artifacts/x")
    assert msg == (
        "zoop needs the noise ports, which artifacts/x was exported without (--ports probe); re-export it with "
        "`zo-edge export --ports noise,probe` (or --ports all, the default)"
    )
    msg = contract.ports_missing("agzo", {"probe", "lowrank"}, [], "artifacts/y")
    assert "agzo needs the lowrank, probe port families" in msg and "(--ports none)" in msg, msg
    assert "--ports lowrank,probe`" in msg, msg
