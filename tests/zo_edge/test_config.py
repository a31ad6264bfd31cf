"""Configs and the CLI's flag layer, without a model: TOML [method]/[optim] tables, defaults owned by the methods,
flags derived from dataclass fields (a method registered here gets its flags with no other edit), one-line user
errors, and tracebacks for bugs.

python -m pytest tests/zo_edge/test_config.py -q
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from runtime.errors import ZoEdgeError
from runtime.method import METHODS, register_method
from zo_edge import cli
from zo_edge.config import ConfigError, EvalConfig, TrainConfig
from zo_edge.methods.base import BaseConfig, ZOBase, knob
from zo_edge.methods.lozo import LOZOConfig


def _flags(argv: list[str]) -> dict:
    """The flag values ``zo-edge train`` would hand to TrainConfig for ``argv``."""
    a = cli.build_parser().parse_args(["train", *argv])
    return cli._given(a, a._names)


def _one_line_exit(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# --- a method registered by the test alone: its Config fields become flags, its ClassVars the defaults ---------
@dataclass
class _FakeConfig(BaseConfig):
    warmth: float = knob(0.5, "how warm the fake direction is")
    loud: bool = knob(True, "shout the fake's progress")
    style: str = knob("plain", "the fake's style")


class _Fake(ZOBase):
    Config = _FakeConfig
    default_lr = 0.25
    default_optimizer = "adam"
    optimizers = frozenset({"sgd", "adam"})

    def init(self, oracle, seed: int) -> None:
        self.seed = seed

    def step(self, oracle, batch, objective, t: int):
        raise NotImplementedError


@pytest.fixture
def fake_method():
    register_method("fake-test")(_Fake)
    yield "fake-test"
    METHODS.pop("fake-test")


def test_registered_method_gets_flags_help_and_defaults(fake_method, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--warmth WARMTH how warm the fake direction is (default: fake-test 0.5)" in help_text
    assert "--loud, --no-loud" in help_text and "fake-test 0.25" in help_text  # its default_lr in --lr's help
    cfg = TrainConfig.from_sources(None, _flags(["--method", fake_method]))
    assert cfg.method_config == _FakeConfig() and cfg.optim.lr == 0.25 and cfg.optim.optimizer == "adam"
    cfg = TrainConfig.from_sources(None, _flags(["--method", fake_method, "--warmth", "2", "--no-loud"]))
    assert cfg.method_config.warmth == 2.0 and cfg.method_config.loud is False
    # its knob on another method: one line naming that method's own knobs
    with pytest.raises(ConfigError, match=r"--warmth: not a setting of method lozo \(its settings: --mu, .*--nu"):
        TrainConfig.from_sources(None, _flags(["--method", "lozo", "--warmth", "2"]))


def test_defaults_live_in_the_method():
    for name, cls in METHODS.items():
        cfg = TrainConfig(method=name)
        assert cfg.method_config == cls.Config(), name
        assert (cfg.optim.lr, cfg.optim.optimizer) == (cls.default_lr, cls.default_optimizer), name


def test_toml_method_table_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'model = "m"\nsteps = 30\ndata = "mine.csv"\ntext_field = "text"\n'
        '[method]\nname = "lozo"\nnu = 20\nmu = 0.002\n[optim]\nlr = 3e-5\nschedule = "cosine"\n'
    )
    cfg = TrainConfig.from_sources(str(path), {})
    assert cfg.method == "lozo" and cfg.method_config == LOZOConfig(nu=20, mu=0.002)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.steps, cfg.text_field) == (3e-5, "cosine", 30, ["text"])
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    # flags override the file, each in its section
    cfg = TrainConfig.from_sources(str(path), _flags(["--nu", "7", "--lr", "1e-4", "--steps", "5"]))
    assert (cfg.method_config.nu, cfg.method_config.mu, cfg.optim.lr, cfg.steps) == (7, 0.002, 1e-4, 5)
    # a method name alone (no knobs) may be a plain top-level key
    path.write_text('method = "subzero"\n')
    assert TrainConfig.from_sources(str(path), {}).method_config == METHODS["subzero"].Config()


@pytest.mark.parametrize(
    "toml, needle",
    [
        ('steps = "ten"', "steps must be an integer"),
        ("steps = true", "steps must be an integer"),
        ('[method]\nname = "lozo"\nnu = "a lot"', "nu must be an integer"),
        ("[optim]\nlr = true", "lr must be a number"),
        ("lr = 0.1", "'lr' at the top level: put it under [optim]"),
        ("nu = 3", "'nu' at the top level: put it under [method]"),
        ("stepz = 3", "unknown key 'stepz'"),
        ("steps = [", "invalid TOML"),
    ],
)
def test_bad_toml_is_one_line_naming_the_file(toml, needle, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    err = _one_line_exit(["train", "--config", str(path), "--model", "m"], capsys)
    assert needle in err and str(path) in err, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--method", "lozo", "--optimizer", "adam"], "method lozo accepts --optimizer sgd, not 'adam'"),
        (["--method", "agzo", "--momentum", "0.9"], "agzo takes plain SGD only"),
        (["--method", "subzero", "--weight-decay", "0.1"], "drop --weight-decay"),
        (["--method", "zo-act", "--nu", "3"], "--nu: not a setting of method zo-act"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--save-every", "0"], "--save-every must be >= 1"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--mu", "-1"], "--mu"),
        (["--mu", "inf"], "--mu"),
        (["--momentum", "1.5", "--method", "mezo"], "--momentum must be in [0, 1)"),
        (["--warmup", "500", "--steps", "10"], "--warmup must be in 0..--steps"),
        (["--schedule", "step"], "--schedule must be one of"),
        (["--objective", "mse"], "--objective must be one of"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "trec", "--data", "f.csv"], "--data is for --task user-data, not trec"),
        (["--task", "user-data"], "--task user-data needs --data"),
        (["--text-field", "body"], "--text-field applies to --data"),
        (["--template", "auto", "--labels", "a=x,b=y"], "--template auto picks a prompt with its own label words"),
        (["--labels", "good=x,bad=y"], "the task's classes are"),
        (["--balance", "maybe"], "--balance must be one of auto, on, off"),
        (["--provider-option", "nokey"], "is not [PROVIDER:]KEY=VALUE"),
        (["--provider-option", "cuda:device_id=0"], "which is not among the providers of this run"),
    ],
)
def test_bad_flags_are_one_line(argv, needle, capsys):
    # --recipe none: the flags are checked against the library defaults without reading the (missing) model "m"
    err = _one_line_exit(["train", "--model", "m", "--recipe", "none", *argv], capsys)
    assert needle in err, err


def test_train_out_must_be_a_run_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert "not a zo-edge run" in _one_line_exit(
        ["train", "--model", "m", "--recipe", "none", "--out", str(tmp_path)], capsys
    )
    argv = ["train", "--model", "m", "--recipe", "none", "--out", str(tmp_path / "notes.txt")]
    assert "is a file" in _one_line_exit(argv, capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def test_data_implies_user_data():
    assert TrainConfig.from_sources(None, _flags(["--data", "mine.csv"])).task == "user-data"
    assert TrainConfig().task == "rotten-tomatoes"
    assert EvalConfig(model="m", data="mine.csv").task == "user-data"


def test_provider_options_reach_the_config():
    cfg = TrainConfig(provider="cuda", provider_option=["cuda:device_id=1", "gpu_mem_limit=2"])
    assert cfg.provider_options(["cuda"]) == {"cuda": {"device_id": "1", "gpu_mem_limit": "2"}}
    e = EvalConfig(model="m", providers="cpu,openvino", provider_option=["openvino:cache_dir=/a:b=c", "x=1"])
    assert e.provider_options(e.provider_list()) == {"cpu": {"x": "1"}, "openvino": {"cache_dir": "/a:b=c"}}


def test_eval_run_alone_names_model_and_data(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(model="some/model", data="mine.csv", labels="a=x,b=y", max_len=40, seed=3)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    e = EvalConfig.from_flags({"run": str(run)})
    assert (e.model, e.task, e.data, e.labels, e.max_len, e.seed) == (
        "some/model",
        "user-data",
        "mine.csv",
        "a=x,b=y",
        40,
        3,
    )
    # another task given: the run's data does not come along
    e = EvalConfig.from_flags({"run": str(run), "task": "trec"})
    assert (e.model, e.task, e.data) == ("some/model", "trec", "")
    with pytest.raises(ConfigError, match="not a zo-edge run folder"):
        EvalConfig.from_flags({"run": str(tmp_path)})


def test_no_bos_reaches_the_task_and_an_eval_of_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(model="some/model", task="rotten-tomatoes", template="Review: {text}\nSentiment:", bos=False)
    assert cfg.make_task().bos is False and TrainConfig(model="some/model").make_task().bos is True
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    e = EvalConfig.from_flags({"run": str(run)})
    assert e.bos is False and e.make_task().bos is False, "the run's prompt is scored as it was trained"
    assert EvalConfig.from_flags({"run": str(run), "task": "trec"}).bos is True, "another task: its own prompt"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_of_every_command_has_help_with_its_default():
    parsers = _parsers()
    assert set(parsers) >= {"export", "train", "eval", "prompts", "merge", "generate", "providers", "demo"}
    for name, p in parsers.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and len(action.help) > 12, f"{what} has no help"
            if action.option_strings:
                assert "default" in action.help or "required" in action.help, f"{what}: help names no default"
                assert action.help.replace("-", " ").strip() != action.dest.replace("_", " "), what


def test_bool_flags_come_from_field_types():
    p = _parsers()["train"]
    bools = {a.dest for a in p._actions if isinstance(a, argparse.BooleanOptionalAction)}
    assert {"skip_bad_rows", "length_normalize", "bias"} <= bools
    assert "steps" not in bools


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    def boom(a):
        raise ZoEdgeError("the folder x is wrong:\n  fix it")

    monkeypatch.setattr(cli, "cmd_providers", boom)
    err = _one_line_exit(["providers"], capsys)
    assert err == "zo-edge providers: error: the folder x is wrong: fix it"


@pytest.mark.parametrize("exc", ["KeyError('x')", "ValueError('deep in a library')", "FileNotFoundError('f')"])
def test_bug_keeps_its_traceback(exc):
    code = (
        "import sys\nfrom zo_edge import cli\n"
        f"def boom(a):\n    raise {exc}\n"
        "cli.cmd_providers = boom\nsys.exit(cli.main(['providers']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode not in (0, 2) and "Traceback" in r.stderr and exc.split("(")[0] in r.stderr, r.stderr


def test_demo_refuses_a_foreign_out_and_keeps_it(tmp_path, capsys, monkeypatch):
    out, artifacts = tmp_path / "mine", tmp_path / "artifacts"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    err = _one_line_exit(["demo", "--out", str(out), "--artifacts", str(artifacts)], capsys)
    assert "--force" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "years of work"
    assert not artifacts.exists(), "the demo started exporting before refusing"
    # an earlier demo run (its marker) passes the check without --force; it stops here at the (stubbed) export
    from zo_edge import demo

    (out / demo.DEMO_MARKER).write_text("")
    monkeypatch.setattr(demo, "ensure_export", lambda *a: (_ for _ in ()).throw(demo.DemoError("stub export")))
    assert "stub export" in _one_line_exit(["demo", "--out", str(out)], capsys)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_demo_config_from_flags(capsys):
    a = cli.build_parser().parse_args(["demo", "--steps", "3", "--int4"])
    given = {k: v for k, v in cli._given(a, a._names).items() if v is not None}
    assert given == {"steps": 3, "int4": True}
    assert np.isclose(TrainConfig(method="zo-act").optim.lr, METHODS["zo-act"].default_lr)


def test_template_and_labels_override_a_builtin_task():
    from zo_edge.tasks import get_task

    e = EvalConfig(
        model="m", task="rotten-tomatoes", template="Review: {text} Verdict:", labels="rotten=bad,fresh=good"
    )
    task = e.make_task()
    assert task.template == "Review: {text} Verdict:"
    assert task.verbalizer == {"rotten": [" bad"], "fresh": [" good"]}
    assert EvalConfig(model="m").make_task().template == get_task("rotten-tomatoes").template


def test_folder_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(model=str(tmp_path / "gone")).to_dict()))
    assert "does not exist" in _one_line_exit(["eval", "--run", str(run)], capsys)  # its model folder is gone
    assert "not found: generate needs a merged model" in _one_line_exit(["generate", str(tmp_path), "hi"], capsys)
    assert "is not a zo-edge run folder" in _one_line_exit(["merge", str(tmp_path), "--out", str(run / "m")], capsys)
    (run / "config.json").write_text("{not json")
    assert "not valid JSON" in _one_line_exit(["eval", "--run", str(run)], capsys)
