"""The zo-edge CLI on a tiny model: train/eval/resume/Ctrl-C/merge/generate and its one-line errors.

python -m pytest tests/zo_edge/test_cli.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime import checkpoint
from zo_edge.cli import main

TRAIN = ["--task", "rotten-tomatoes", "--batch-size", "4", "--max-len", "32", "--k", "8", "--dev-k", "4"]


def _train(model: Path, out: Path, method: str, steps: int, *extra: str) -> int:
    return main(
        ["train", "--model", str(model), "--method", method, "--steps", str(steps), "--out", str(out), *TRAIN, *extra]
    )


def test_train_writes_run_folder_and_eval_reads_it(tiny_lm_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_lm_dirs["fp32"], run, "lozo", 6, "--save-every", "3") == 0
    assert {"config.json", "metrics.jsonl", "loss.png", "best", "test.json"} <= {p.name for p in run.iterdir()}
    held_out = json.loads((run / "test.json").read_text())
    assert held_out["before"]["n"] == held_out["after"]["n"] > 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    assert any("eval_accuracy" in r for r in rows)
    assert json.loads((run / "config.json").read_text())["method"]["name"] == "lozo"
    capsys.readouterr()
    # --run alone: the run's config.json names the model and the task
    assert main(["eval", "--run", str(run), "--eval-examples", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cpu"]["n"] == 8 and 0.0 <= result["cpu"]["accuracy"] <= 1.0


def test_template_auto_records_the_chosen_prompt(tiny_lm_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--template", "auto", "--eval-examples", "8", "--layers", "top:1"]
    assert _train(tiny_lm_dirs["fp32"], run, "lozo", 2, *argv) == 0
    out = capsys.readouterr().out
    written = json.loads((run / "config.json").read_text())
    assert "--template auto, best dev AUC" in out and written["template"] not in ("", "auto") and written["labels"]
    before = json.loads((run / "test.json").read_text())["before"]
    assert before["prompt"] in out and "zero-shot with prompt" in out, "the before names the prompt it was scored with"
    assert written["layers"] == "top:1"
    assert main(["prompts", "--run", str(run), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert len(scores) >= 1 and sum(s["chosen"] for s in scores) == 1 == sum(s["zero_shot_best"] for s in scores)


def test_toml_config_and_flag_override(tiny_lm_dirs, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'model = "{tiny_lm_dirs["fp32"]}"\nsteps = 99\n[method]\nname = "subzero"\nrefresh = 7\n[optim]\nlr = 0.5\n'
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--steps", "2", "--rank", "3", "--out", str(run), *TRAIN]) == 0
    written = json.loads((run / "config.json").read_text())
    assert written["steps"] == 2 and written["optim"]["lr"] == 0.5
    assert written["method"] == {**written["method"], "name": "subzero", "refresh": 7, "rank": 3}


def test_resume_via_cli_is_bit_identical(tiny_lm_dirs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tiny_lm_dirs["int4"], a, "zo-act", 6) == 0
    assert _train(tiny_lm_dirs["int4"], b, "zo-act", 3, "--save-every", "100") == 0
    assert _train(tiny_lm_dirs["int4"], b, "zo-act", 6, "--resume") == 0
    arrays_a, _ = checkpoint.load_checkpoint(a)
    arrays_b, _ = checkpoint.load_checkpoint(b)
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        assert np.array_equal(arrays_a[k], arrays_b[k]), k


def test_ctrl_c_saves_and_resume_finishes(tiny_lm_dirs, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "zo_edge.cli",
        "train",
        "--model",
        str(tiny_lm_dirs["fp32"]),
        "--method",
        "mezo",
        "--steps",
        "100000",
        "--out",
        str(run),
        "--save-every",
        "100000",
        *TRAIN,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count('"loss"') < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out
    latest = checkpoint.latest_checkpoint(run)
    assert latest is not None
    done = checkpoint.load_checkpoint(latest)[1]["step"]
    assert done >= 3
    assert _train(tiny_lm_dirs["fp32"], run, "mezo", done + 2, "--resume") == 0
    assert checkpoint.load_checkpoint(run)[1]["step"] == done + 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["export", "/no/such/model", "--out", "x"], "not found"),
        (["eval", "/no/such/dir"], "does not exist"),
        (["train", "--model", "/no/such/dir", "--method", "lozo", "--out", "r"], "does not exist"),
        (["train", "--model", "m", "--method", "nope", "--out", "r"], "unknown method"),
        (["train", "--model", "MODEL", "--task", "nope", "--out", "r"], "unknown task"),
        (["eval", "MODEL", "--provider", "qnn"], "not available"),
    ],
)
def test_one_line_errors(argv, needle, tiny_lm_dirs, capsys):
    argv = [str(tiny_lm_dirs["fp32"]) if x == "MODEL" else x for x in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_user_data_bad_rows_reported_with_line(tiny_lm_dirs, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n{broken\n')
    argv = [
        "train",
        "--model",
        str(tiny_lm_dirs["fp32"]),
        "--task",
        "user-data",
        "--data",
        str(data),
        "--labels",
        "neg=terrible,pos=great",
        "--out",
        str(tmp_path / "r"),
        "--steps",
        "1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "--skip-bad-rows" in err.replace("skip_bad_rows", "--skip-bad-rows")


@pytest.mark.parametrize(("base", "recipe"), [("fp32", "zo-act"), ("int4", "zo-act"), ("int4", "head")])
def test_merge_matches_training_graph_and_generates(base, recipe, tiny_lm_dirs, tmp_path, capsys):
    """The merged HF model (ΔW folded; INT4: into the dequantized base) gives the training graph's per-row losses
    with the trained state, to 1e-4; so do the KV-cache graphs. ``head`` on INT4: the head recipe's trained final
    norm (a float param of the INT4 export) reaches hf/, onnx/ and the re-quantized onnx-int4/."""
    from transformers import AutoModelForCausalLM

    from runtime.batch import Batch
    from runtime.loop import load_trained
    from runtime.oracle import Oracle
    from runtime.session import GraphSession

    run, merged = tmp_path / "run", tmp_path / "merged"
    if recipe == "head":
        argv = ["--recipe", "head", "--queries", "4", "--eval-examples", "8", "--lr", "0.1"]
        assert _train(tiny_lm_dirs[base], run, "mezo", 5, *argv) == 0
    else:
        assert _train(tiny_lm_dirs[base], run, "zo-act", 5, "--lr", "0.05") == 0
    assert main(["merge", str(run), "--out", str(merged), "--checkpoint", "latest"]) == 0
    assert (merged / "adapter.json").is_file()
    oracle = Oracle(GraphSession(tiny_lm_dirs[base]))
    base_params = {k: v.copy() for k, v in oracle.params.items()}
    load_trained(oracle, checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run))[0])
    if recipe == "head":
        moved = [k for k, v in oracle.params.items() if not np.array_equal(v, base_params[k])]
        assert moved == ["model.norm.weight"], f"the head recipe must move the final norm alone: {moved}"
    else:
        assert (merged / "adapter.safetensors").is_file()
        assert any(np.abs(a.q).max() > 0 for a in oracle.trained.adapters.values()), "training changed nothing"
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 1000, (3, 9))
    attn = np.ones_like(ids)
    attn[0, :3] = 0
    batch = Batch(ids, attn, np.ones_like(ids))
    ort_nll = oracle.run(batch)["row_nll"]
    model = AutoModelForCausalLM.from_pretrained(merged / "hf").eval()
    with torch.no_grad():
        pos = torch.tensor(np.clip(np.cumsum(attn, 1) - 1, 0, None))
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(attn), position_ids=pos).logits
        lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(2, torch.tensor(ids[:, 1:])[..., None])[..., 0]
        eff = torch.tensor(attn[:, 1:] * attn[:, :-1]).double()
        ref = -(lp * eff).sum(1).numpy()
    np.testing.assert_allclose(ort_nll, ref, rtol=1e-4)
    # the KV-cache inference graphs compute the same function (INT4: re-quantized base + adapter branch)
    from runtime.generate import Generator

    plain = Batch(ids[1:], np.ones_like(ids[1:]), np.ones_like(ids[1:]))
    want = oracle.run(plain)["row_nll"]
    for folder in ["onnx"] + (["onnx-int4"] if base == "int4" else []):
        logits = Generator(merged / folder).sequence_logits(ids[1:]).astype(np.float64)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        tok_lp = np.take_along_axis(logits[:, :-1], ids[1:, 1:, None], 2)[..., 0] - lse[:, :-1]
        np.testing.assert_allclose(-tok_lp.sum(1), want, rtol=1e-4, err_msg=folder)
    capsys.readouterr()
    assert main(["generate", str(merged), "It was", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("It was")


def test_providers_lists_cpu(capsys):
    assert main(["providers"]) == 0
    out = capsys.readouterr().out
    assert "CPUExecutionProvider" in out and "Azure" not in out


def test_cli_help_is_complete():
    for cmd in ("export", "train", "eval", "merge", "generate", "providers", "demo"):
        r = subprocess.run(
            [sys.executable, "-m", "zo_edge.cli", cmd, "--help"], capture_output=True, text=True, env={**os.environ}
        )
        assert r.returncode == 0 and "usage" in r.stdout, cmd


def test_eval_of_a_run_without_checkpoint_is_one_line(tiny_lm_dirs, tmp_path, capsys):
    from zo_edge.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(model=str(tiny_lm_dirs["fp32"])).to_dict()))
    assert main(["eval", "--run", str(run), "--eval-examples", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no checkpoint" in err and "\n" not in err


def test_eval_on_two_providers_prints_the_cross_provider_report(tiny_lm_dirs, capsys):
    """The same provider under two names: the report's table, no flips and no hidden-state drift at all."""
    model = str(tiny_lm_dirs["fp32"])
    argv = [
        "eval",
        model,
        "--task",
        "rotten-tomatoes",
        "--eval-examples",
        "8",
        "--providers",
        "cpu,CPUExecutionProvider",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cross-provider report (base, n=8, against cpu)" in out, out
    assert "CPUExecutionProvider: no prediction flips vs cpu" in out, out
    assert "hidden-state drift stays below" in out, out


# --- eval on the user's data, --run alone, chat generation (issue #15) --------------------------------------------
def _reviews(path: Path, n: int = 40) -> Path:
    words = {"pos": ["fine", "lovely", "moving", "sharp"], "neg": ["dull", "flat", "tired", "clumsy"]}
    rows = ["text,label"] + [
        f"a {words[lab][i % 4]} film number {i},{lab}" for i in range(n) for lab in ("pos", "neg")
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_eval_takes_the_train_data_flags_and_run_alone_scores_the_run(tiny_lm_dirs, tmp_path, capsys):
    """Train on a CSV (--data alone means user-data), then eval: with the data flags (base model), and with --run
    alone (model, data, template and labels from the run); a --template override on a built-in task is honoured."""
    data = _reviews(tmp_path / "reviews.csv")
    flags = ["--data", str(data), "--template", "Review: {text} Sentiment:", "--labels", "neg=bad,pos=good"]
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_lm_dirs["fp32"]), "--method", "zo-act", "--steps", "2", "--out", str(run)]
    assert main([*argv, *flags, "--batch-size", "4", "--k", "8", "--dev-k", "4", "--eval-examples", "6"]) == 0
    assert json.loads((run / "config.json").read_text())["task"] == "user-data"
    capsys.readouterr()
    assert main(["eval", str(tiny_lm_dirs["fp32"]), *flags, "--eval-examples", "6", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["cpu"]
    assert main(["eval", "--run", str(run), "--eval-examples", "6", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)["cpu"]
    held_out = json.loads((run / "test.json").read_text())
    assert base["n"] == trained["n"] == 6
    assert base["accuracy"] == held_out["before"]["accuracy"] and trained["accuracy"] == held_out["after"]["accuracy"]
    # a built-in task takes another template and label words (checked against its own classes, in one line)
    model = str(tiny_lm_dirs["fp32"])
    rt = ["eval", model, "--task", "rotten-tomatoes", "--eval-examples", "6", "--json"]
    assert main([*rt, "--template", "Movie: {text} Verdict:", "--labels", "rotten=awful,fresh=superb"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu"]["n"] == 6
    assert main([*rt, "--template", "Movie: {text} Verdict:", "--labels", "neg=awful,pos=superb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the task's classes are ['fresh', 'rotten']" in err and "\n" not in err


def test_eval_refuses_a_run_of_another_base_in_one_line(tiny_lm_dirs, tmp_path, capsys):
    from runtime import contract

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(tiny_lm_dirs["fp32"]), "task": "rotten-tomatoes"}))
    meta = {contract.META_FORMAT_VERSION: contract.CHECKPOINT_FORMAT_VERSION, contract.META_WEIGHTS_SHA256: "0" * 64}
    checkpoint.save_checkpoint(run, 1, {}, meta)
    for argv in (["eval", "--run", str(run)], ["eval", str(tiny_lm_dirs["fp32"]), "--run", str(run)]):
        assert main([*argv, "--checkpoint", "latest", "--eval-examples", "4"]) == 2
        err = capsys.readouterr().err.strip()
        assert "another base model" in err and "\n" not in err, err


def test_every_flag_of_every_command_has_a_help_text():
    """No flag's help is empty or just its own name (issue #15: --nu, --dist, ... printed their names)."""
    from zo_edge.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest in ("help",) or not action.option_strings and action.dest == "command":
                continue
            text = (action.help or "").strip()
            flag = action.option_strings[0] if action.option_strings else action.dest
            assert len(text) > 12 and text.lower().strip("-") != flag.strip("-").replace("-", " "), (name, flag, text)


def test_chat_template_renders_like_transformers(smollm2_dir):
    from transformers import AutoTokenizer

    from runtime.tokenizer import ChatTemplate

    template = ChatTemplate.from_folder(smollm2_dir)
    assert template is not None, "SmolLM2-Instruct's tokenizer carries a chat template"
    ref = AutoTokenizer.from_pretrained(smollm2_dir)
    for messages in (
        [{"role": "user", "content": "Is this review positive? A fine film."}],
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ):
        for gen in (True, False):
            want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert template.render(messages, add_generation_prompt=gen) == want


def test_generate_chat_wraps_the_prompt_in_the_template(tiny_lm_dirs, smollm2_dir, tmp_path, capsys):
    """--chat is on for a model with a chat template: the reply equals the merged HF model's greedy reply to the
    templated prompt (transformers' apply_chat_template, the independent reference); --no-chat continues the text."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, merged = tmp_path / "run", tmp_path / "merged"
    assert _train(tiny_lm_dirs["fp32"], run, "zo-act", 2) == 0
    assert main(["merge", str(run), "--out", str(merged)]) == 0
    for sub in ("hf", "onnx"):
        shutil.copy2(smollm2_dir / "chat_template.jinja", merged / sub / "chat_template.jinja")
    capsys.readouterr()
    assert main(["generate", str(merged), "Is it good?", "--max-new-tokens", "5"]) == 0
    reply = capsys.readouterr().out.removesuffix("\n")  # print's own newline (the reply may end in newlines)
    ref_tok = AutoTokenizer.from_pretrained(merged / "hf")
    ids = ref_tok.apply_chat_template([{"role": "user", "content": "Is it good?"}], add_generation_prompt=True)
    model = AutoModelForCausalLM.from_pretrained(merged / "hf").eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=5, do_sample=False, eos_token_id=model.config.eos_token_id
        )
    new = out[0, len(ids) :].tolist()
    new = new[: new.index(model.config.eos_token_id)] if model.config.eos_token_id in new else new
    assert reply == ref_tok.decode(new)
    assert main(["generate", str(merged), "It was", "--no-chat", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("It was")
