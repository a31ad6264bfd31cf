"""Greedy generation with onnxruntime-genai, for tests/genai: run in the torch-free ``.venv-genai`` (a subprocess).

    .venv-genai/bin/python tests/genai/run_genai.py REQUEST.json    # prints one JSON line

REQUEST: {"folder": genai folder, "adapters": {name: .onnx_adapter path}, "active": [null | name, ...],
"prompts": [[token ids], ...], "max_length": total tokens}. Output: {"<name or ''>": {"tokens": [[ids], ...],
"logits": [[vocab floats at each prompt's last position], ...]}, "eos": [ids]}, each prompt generated alone
(batch 1), with one ``og.Model`` and its ``og.Adapters`` shared by every activation: the run-time swap the format
exists for. genai stops on an EOS id of genai_config.json without putting it into the sequence (torch's generate
keeps it), so the EOS ids are returned for the comparison.
Imports nothing but onnxruntime_genai and numpy, so it also shows the folder runs where torch is absent.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime_genai as og


def main() -> None:
    req = json.loads(open(sys.argv[1]).read())
    model = og.Model(req["folder"])
    adapters = og.Adapters(model)
    for name, path in req["adapters"].items():
        adapters.load(path, name)
    out = {}
    for active in req["active"]:
        tokens, logits = [], []
        for prompt in req["prompts"]:
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=req["max_length"])
            gen = og.Generator(model, params)
            if active:
                gen.set_active_adapter(adapters, active)
            gen.append_tokens(np.asarray([prompt], dtype=np.int32))
            logits.append(np.asarray(gen.get_output("logits"), np.float32)[0, -1].tolist())
            while not gen.is_done():
                gen.generate_next_token()
            tokens.append([int(t) for t in gen.get_sequence(0)])
        out[active or ""] = {"tokens": tokens, "logits": logits}
    eos = json.loads(open(f"{req['folder']}/genai_config.json").read())["model"]["eos_token_id"]
    out["eos"] = eos if isinstance(eos, list) else [eos]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
