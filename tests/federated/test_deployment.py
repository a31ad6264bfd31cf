"""``flwr run`` on Flower's deployment runtime, on localhost: the path README documents for real machines.

    ZO_EDGE_FL_MODEL=artifacts/tiny-fl .venv-fl/bin/python -m pytest --noconftest -q -rs tests/federated

One SuperLink (``flower-superlink --insecure``), two SuperNodes (``flower-supernode --insecure --node-config
'partition-id=I num-partitions=2'``) and ``flwr run`` of examples/flower-app, each a process of its own as on real
machines (the SuperLink runs the ServerApp in a ``flwr-serverapp`` process, each SuperNode every message in a
``flwr-clientapp`` process). The reference is ``simulate()`` of the same TOML in this process: the protocol is a
pure function of (seed, step, query, layer) and the scalars, so the two must end on the same bits.

ZO-Act, because it exercises what this runtime can break: the federated basis (sketch messages with arrays, the
bases sent once to each client) and a client replica that must outlive the process that built it (Context.state).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

#: the Flower CLIs of the environment running the tests (the SuperLink and SuperNodes start the last three by name)
BIN = Path(sys.executable).parent
CLIS = ("flower-superlink", "flower-supernode", "flwr", "flower-superexec", "flwr-serverapp", "flwr-clientapp")
PATH = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
MISSING = [c for c in CLIS if shutil.which(c, path=PATH) is None]
APP = Path(__file__).resolve().parents[2] / "examples" / "flower-app"

pytestmark = [
    pytest.mark.skipif(not os.environ.get("ZO_EDGE_FL_MODEL"), reason="needs ZO_EDGE_FL_MODEL (make test-federated)"),
    pytest.mark.skipif(bool(MISSING), reason=f"Flower's CLIs not installed here: {', '.join(MISSING)}"),
]

from runtime import checkpoint  # noqa: E402
from zo_edge.federated import flower  # noqa: E402
from zo_edge.federated.node import FederatedConfig  # noqa: E402

#: seconds the run may take (measured ~60 s on one loaded core: ~3 s of process start-up per message)
RUN_TIMEOUT = 240
STEPS = 2


def _free_ports(n: int) -> list[int]:
    """n ports nothing listens on now (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited ({proc.returncode}):\n{_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{proc.args[0]} did not listen on {port} within {timeout:g} s:\n{_tail(log)}")


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process we started and every process below it (SuperExec, flwr-serverapp, flwr-clientapp; some
    start in sessions of their own), by pid; SIGKILL what is left after 10 s."""
    family: list[psutil.Process] = []
    for p in procs:
        try:
            parent = psutil.Process(p.pid)
            family += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for q in family:
        try:
            q.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for q in alive:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _fed_toml(model: Path, out: Path) -> str:
    """A ZO-Act run of the tiny export: 2 clients, STEPS rounds, everything explicit (as every machine needs)."""
    return (
        f'model = "{model}"\ntask = "rotten-tomatoes"\ntemplate = "Review: {{text}}\\nSentiment:"\nmax_len = 64\n'
        f'method = "zo-act"\nsteps = {STEPS}\nbatch_size = 4\nk = 8\ndev_k = 4\neval_examples = 8\nthreads = 1\n'
        f'out = "{out}"\n[federated]\nclients = 2\npartition = "iid"\ntimeout = 120\n'
    )


def test_example_app_is_a_valid_flower_app():
    """examples/flower-app: Flower accepts its pyproject (the components load), and its fed.toml builds a Setup."""
    from flwr.cli.config_utils import load_and_validate

    config, _ = load_and_validate(APP / "pyproject.toml", check_module=True)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "zo_edge.federated.flower:server_app",
        "clientapp": "zo_edge.federated.flower:client_app",
    }
    assert config["tool"]["flwr"]["app"]["config"]["config"] == "fed.toml"
    assert "federations" not in config["tool"]["flwr"], "flwr >= 1.2x rewrites a pyproject holding it"
    setup = flower.setup_from_run_config({"config": str(APP / "fed.toml")})
    assert setup.fed_config().clients == 2 and setup.train_config().max_len > 0


@pytest.mark.slow
def test_flwr_run_on_a_superlink_and_two_supernodes(tmp_path):
    """The ServerApp's run folder (federated.json, the checkpoint) after ``flwr run`` on the deployment runtime:
    every round answered by both SuperNodes, the history finite, and the global state bit for bit that of
    ``simulate()`` of the same config (the checksum and every array of the checkpoint)."""
    model = Path(os.environ["ZO_EDGE_FL_MODEL"]).resolve()
    app, home, work, logs = (tmp_path / d for d in ("app", "flwr-home", "work", "logs"))
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    # the app's own fed.toml, replaced: `config = "fed.toml"` reaches the processes in the app bundle (FAB), since
    # none of them runs where a fed.toml is (`work`): the relative-path lookup README relies on
    out = tmp_path / "out"
    (app / "fed.toml").write_text(_fed_toml(model, out))
    for d in (home, work, logs):
        d.mkdir()
    link, *nodes = _free_ports(3)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "zo-edge"\n\n[superlink.zo-edge]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": PATH,
        "FLWR_HOME": str(home),  # connections, installed apps: never the user's ~/.flwr
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = logs / f"{name}.log"
        cmd = [shutil.which(args[0], path=PATH), *args[1:]]
        with log.open("w") as f:
            procs.append(subprocess.Popen(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT))
        return procs[-1], log

    def flwr(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [shutil.which("flwr", path=PATH), *args]
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    def all_logs() -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(logs.iterdir()))

    t0 = time.monotonic()
    try:
        sl, sl_log = start(
            "superlink", "flower-superlink", "--insecure", "--port", str(link),
            "--disable-runtime-dependency-installation",
        )  # fmt: skip
        _wait_listening(link, sl, sl_log)
        for i, port in enumerate(nodes):
            sn, sn_log = start(
                f"supernode-{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                "--port", str(port), "--node-config", f"partition-id={i} num-partitions=2",
            )  # fmt: skip
            _wait_listening(port, sn, sn_log)
        started = flwr("run", str(app), "zo-edge")
        assert started.returncode == 0 and "Successfully started run" in started.stdout, (
            f"{started.stdout}\n{started.stderr}\n{all_logs()}"
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            listed = flwr("ls", "zo-edge", "--format", "json")
            runs = json.loads(listed.stdout)["runs"] if listed.returncode == 0 else []
            if runs and all(r["status"].startswith("finished") for r in runs):
                break
            assert all(p.poll() is None for p in procs), f"a Flower process died:\n{all_logs()}"
            assert time.monotonic() < deadline, f"the run did not finish in {RUN_TIMEOUT} s:\n{all_logs()}"
            time.sleep(1)
        assert len(runs) == 1 and runs[0]["status"] == "finished:completed", f"{runs}\n{all_logs()}"
    finally:
        _stop(procs)
    wall = time.monotonic() - t0

    fed = json.loads((out / "federated.json").read_text())
    rounds = fed["rounds"]
    assert len(rounds) == STEPS
    assert all(r["sampled"] == r["answered"] == 2 and not r["rejected"] and r["applied"] for r in rounds), rounds
    assert fed["calibration_bytes"]["up"] > 0, "the ZO-Act basis was computed from the SuperNodes' sketches"
    assert [t for t, _ in fed["history"]] == list(range(STEPS))
    assert all(len(g) == 1 and np.isfinite(g).all() for _, g in fed["history"])
    assert np.isfinite(rounds[-1]["loss"]) and set(rounds[-1]["eval"]) >= {"accuracy", "auc"}
    assert json.loads((out / "config.json").read_text())["federated"]["clients"] == 2

    # the reference: the same TOML, simulated in this process (the same apps and messages, one process)
    setup = flower.setup_from_run_config({"config": str(app / "fed.toml")})
    cfg = setup.train_config()
    cfg.out = str(tmp_path / "simulated")
    sim = flower.simulate(cfg, FederatedConfig(**{**setup.fed, "engine": "inprocess"}), evaluate=False)
    assert fed["checksum"] == sim.checksums[-1], "the deployed federation ended elsewhere than the simulated one"
    deployed, meta = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(out))
    simulated, _ = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(cfg.out))
    assert sorted(deployed) == sorted(simulated) and meta["method"] == "zo-act"
    differ = [k for k in simulated if not np.array_equal(simulated[k], deployed[k])]
    assert not differ, f"{len(differ)} arrays differ from the simulated run, e.g. {differ[:3]}"
    print(f"deployment runtime: {STEPS} rounds x 2 SuperNodes in {wall:.0f} s")
