"""The bad-input corpus of issue #16: generated corruptions of every kind of input zo-edge reads.

Each ``Case`` prepares a scratch copy of the fixture's model folder, run folder or data file (``Work``), corrupts
one thing, and names the real entry point to run (``zo_edge.cli.main`` argv). ``test_corpus.py`` runs them all
and classifies each outcome:

* **clean**: exit 2 with one stderr line that names the file or flag (``needle``), and every folder the case
  guards hashes as before;
* **accepted**: the case expects success (a legal but unusual input) and gets exit 0, with nothing non-finite
  written into any checkpoint;
* **traceback**: any exception escaping ``main`` (or exit 2 spanning several lines);
* **damaged**: a guarded folder changed although the command failed, or a non-finite value was written;
* **silent**: a bad input that exited 0 (accepted without a word).

Kinds: manifest, safetensors (params and checkpoint arrays), checkpoint meta, checkpoint arrays, data files
(CSV/TSV/JSONL), CLI flags, TOML configs, paths (containment, symlinks), disk (ENOSPC / read-only on save).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the flags every corpus command shares: tiny batches, short prompts, few held-out examples
DATA_FLAGS = ["--text-field", "text", "--labels", "neg=bad,pos=good", "--max-len", "32", "--k", "8", "--dev-k", "4"]
TRAIN_FLAGS = [*DATA_FLAGS, "--batch-size", "4", "--eval-examples", "4"]

# --- scratch copies ----------------------------------------------------------------------------------------------


def clone(src: Path, dst: Path, *, link: tuple[str, ...] = ()) -> Path:
    """Copy a folder; files named in ``link`` (large, read-only for the case) are hard links."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dst / p.name, symlinks=True)
        elif p.name in link:
            os.link(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)
    return dst


@dataclass
class Work:
    """One case's scratch area: a model folder, a run folder (its config.json naming that model), data, outputs."""

    root: Path
    model: Path
    run: Path
    data: Path

    def replace(self, path: Path, data: bytes | str) -> None:
        """Write a file anew (never through a hard link to the fixture)."""
        path.unlink(missing_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    def edit_json(self, path: Path, fn: Callable[[dict], object]) -> None:
        d = json.loads(path.read_text())
        out = fn(d)
        self.replace(path, json.dumps(d if out is None else out))

    @property
    def manifest(self) -> Path:
        return self.model / "manifest.json"

    @property
    def latest(self) -> Path:
        return self.run / (self.run / "latest").read_text().strip()

    def eval_model(self, *extra: str) -> list[str]:
        return [
            "eval",
            str(self.model),
            "--data",
            str(self.data),
            *DATA_FLAGS,
            "--eval-examples",
            "2",
            "--json",
            *extra,
        ]

    def eval_run(self, *extra: str) -> list[str]:
        return ["eval", "--run", str(self.run), "--eval-examples", "2", "--json", *extra]

    def load_run(self, which: str = "best") -> Callable[[], object]:
        """What ``zo-edge eval --run`` does with a run folder (``zo_edge.train.load_run``), on one shared oracle:
        the same loader and checks without building a session per case."""
        from zo_edge.train import load_run

        return lambda: load_run(shared_oracle(self.model), self.run, which)

    def open_model(self) -> Callable[[], object]:
        """What every command does with a model folder: manifest, graph and params checks, a session built."""
        from zo_edge.train import make_oracle

        return lambda: make_oracle(str(self.model), "cpu", 1)

    def train(self, out: Path | None = None, *extra: str, steps: int = 2) -> list[str]:
        out = out or self.root / "new-run"
        argv = ["train", "--model", str(self.model), "--data", str(self.data), *TRAIN_FLAGS]
        return [*argv, "--method", "zo-act", "--steps", str(steps), "--out", str(out), *extra]

    def resume(self, *extra: str, steps: int = 6) -> list[str]:
        return self.train(self.run, "--resume", "--save-every", "2", *extra, steps=steps)


_ORACLE: list = []


def shared_oracle(model: Path):
    """One oracle for every run-folder case (their models are copies of the same export)."""
    if not _ORACLE:
        from zo_edge.train import make_oracle

        _ORACLE.append(make_oracle(str(model), "cpu", 1))
    return _ORACLE[0]


@dataclass
class Case:
    id: str
    kind: str
    argv: Callable[[Work], list[str]]
    setup: Callable[[Work], None] = lambda w: None
    expect: str = "error"  # "error" | "accept"
    needle: str | Callable[[Work], str] = ""  # what the error line must name (a file name or a flag)
    guard: tuple[str, ...] = ("model", "run")  # folders that must not change when the command fails
    patch: Callable[[object], None] | None = None  # gets pytest's monkeypatch
    absent: Callable[[Work], Path] | None = None  # a path that must not exist afterwards (no stub output)
    tags: dict = field(default_factory=dict)


# --- safetensors helpers -----------------------------------------------------------------------------------------


def st_split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st_join(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def st_case(where: str, mutate: Callable[[dict, bytes], bytes]) -> Callable[[Work], None]:
    """A setup that rewrites the safetensors file ``where`` ("params" or "ckpt") with ``mutate(header, data)``."""

    def setup(w: Work) -> None:
        path = w.model / "params.safetensors" if where == "params" else w.latest / "arrays.safetensors"
        header, data = st_split(path)
        w.replace(path, mutate(header, data))

    return setup


def first_tensor(header: dict, prefix: str = "") -> str:
    return next(k for k in sorted(header) if k != "__metadata__" and k.startswith(prefix))


def _shift(header: dict, name: str, begin: int, end: int) -> dict:
    header[name]["data_offsets"] = [begin, end]
    return header


def _last(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def safetensors_mutations() -> list[tuple[str, Callable[[dict, bytes], bytes]]]:
    def hdr(fn):
        return lambda h, d: st_join(fn(h) or h, d)

    def first(h):
        return first_tensor(h)

    return [
        ("empty-file", lambda h, d: b""),
        ("four-bytes", lambda h, d: b"\x01\x02\x03\x04"),
        ("length-only", lambda h, d: st_join(h, d)[:8]),
        ("mid-header", lambda h, d: st_join(h, d)[:40]),
        ("header-only", lambda h, d: st_join(h, b"")),
        ("truncated-half", lambda h, d: st_join(h, d[: len(d) // 2])),
        ("truncated-1-byte", lambda h, d: st_join(h, d[:-1])),
        ("trailing-bytes", lambda h, d: st_join(h, d + b"\0" * 16)),
        ("length-2^63", lambda h, d: st_join(h, d, length=2**63)),
        ("length-1TB", lambda h, d: st_join(h, d, length=2**40)),
        ("length-past-eof", lambda h, d: st_join(h, d, length=len(d) + 4096)),
        ("header-not-json", lambda h, d: st_join(b"{not json", d)),
        ("header-not-utf8", lambda h, d: st_join(b'{"\xff\xfe": 1}', d)),
        ("header-a-list", lambda h, d: st_join(b"[1, 2, 3]", d)),
        ("header-nan", lambda h, d: st_join(b'{"x": NaN}', d)),
        ("dtype-unknown", hdr(lambda h: h[first(h)].update(dtype="Q7"))),
        ("dtype-f64-lie", hdr(lambda h: h[first(h)].update(dtype="F64"))),
        ("shape-negative", hdr(lambda h: h[first(h)].update(shape=[-1, *h[first(h)]["shape"][1:]]))),
        ("shape-string", hdr(lambda h: h[first(h)].update(shape="big"))),
        ("shape-bool", hdr(lambda h: h[first(h)].update(shape=[True]))),
        ("shape-too-big", hdr(lambda h: h[first(h)].update(shape=[2**20, 2**20]))),
        ("offsets-past-end", hdr(lambda h: _shift(h, _last(h), 0, 2**40))),
        ("offsets-reversed", hdr(lambda h: _shift(h, first(h), 8, 0))),
        ("offsets-float", hdr(lambda h: h[first(h)].update(data_offsets=[0.0, 4.5]))),
        ("offsets-three", hdr(lambda h: h[first(h)].update(data_offsets=[0, 4, 8]))),
        ("offsets-overlap", hdr(lambda h: _overlap(h))),
        ("tensor-missing-key", hdr(lambda h: h[first(h)].pop("dtype"))),
        ("tensor-extra-key", hdr(lambda h: h[first(h)].update(extra=1))),
        ("tensor-not-object", hdr(lambda h: h.update({first(h): 7}))),
        ("metadata-not-strings", hdr(lambda h: h.update(__metadata__={"a": 1}))),
    ]


def _overlap(h: dict) -> dict:
    """Two tensors claiming the same bytes: the second starts inside the first (sizes kept)."""
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    a, b = names[0], names[1]
    size_b = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    begin = h[a]["data_offsets"][0]
    h[b]["data_offsets"] = [begin, begin + size_b]
    return h


def rewrite_arrays(path: Path, fn: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Load a safetensors file, let ``fn`` edit the arrays, write it back consistently (a well-formed file)."""
    from runtime.safetensors_io import read_safetensors_writable, safetensors_chunks

    arrays = {k: np.array(v) for k, v in read_safetensors_writable(path).items()}
    fn(arrays)
    path.unlink()
    with open(path, "wb") as f:
        for chunk in safetensors_chunks(arrays):
            f.write(chunk)


# --- the cases ---------------------------------------------------------------------------------------------------


def manifest_cases() -> list[Case]:
    def m(id_, fn, expect="error", needle="manifest.json"):
        return Case(
            f"manifest/{id_}",
            "manifest",
            lambda w: w.eval_model(),
            lambda w: w.edit_json(w.manifest, fn),
            expect=expect,
            needle=needle,
        )

    def set_(key, value):
        return lambda d: d.update({key: value})

    def pop(key):
        return lambda d: d.pop(key)

    def item(list_key, i, key, value):
        return lambda d: d[list_key][i].update({key: value})

    cases = [
        m("not-an-object", lambda d: [d]),
        m("a-string", lambda d: "manifest"),
        m("format-version-2", set_("format_version", 2)),
        m("format-version-str", set_("format_version", "1")),
        m("format-version-missing", pop("format_version")),
        m("unknown-key", set_("surprise", 1)),
        m("missing-params", pop("params"), expect="error"),
        m("missing-vocab", pop("vocab_size")),
        m("missing-tokenizer-files", pop("tokenizer_files")),
        m("dtype-fp64", set_("dtype", "fp64")),
        m("dtype-list", set_("dtype", ["fp32"])),
        m("int4-no-block", lambda d: d.update(dtype="int4", int4_block_size=None)),
        m("vocab-zero", set_("vocab_size", 0)),
        m("vocab-huge", set_("vocab_size", 2**40)),
        m("vocab-float", set_("vocab_size", 49152.0)),
        m("vocab-bool", set_("vocab_size", True)),
        m("pad-negative", set_("pad_token_id", -1)),
        m("pad-past-vocab", lambda d: d.update(pad_token_id=d["vocab_size"])),
        m("bos-string", set_("bos_token_id", "1")),
        m("basis-rank-zero", set_("basis_rank", 0)),
        m("basis-rank-huge", set_("basis_rank", 10**9)),
        m("power-iters-negative", set_("power_iters", -3)),
        m("hf-config-list", set_("hf_config", [1])),
        m("hf-hidden-huge", lambda d: d["hf_config"].update(hidden_size=2**40)),
        m("params-a-dict", set_("params", {})),
        m("params-empty-fp32", set_("params", [])),
        m("param-not-object", lambda d: d["params"].__setitem__(0, "x")),
        m("param-unknown-key", item("params", 0, "extra", 1)),
        m("param-missing-shape", lambda d: d["params"][0].pop("shape")),
        m("param-shape-negative", item("params", 0, "shape", [-4])),
        m("param-shape-huge", item("params", 0, "shape", [2**30, 2**30])),
        m("param-shape-str", item("params", 0, "shape", "4x4")),
        m("param-kind-unknown", item("params", 0, "kind", "magic")),
        m("param-duplicate", lambda d: d["params"].append(dict(d["params"][0]))),
        m("linear-d-out-14TiB", item("linears", 0, "d_out", 2**42)),
        m("linear-d-in-zero", item("linears", 0, "d_in", 0)),
        m("linear-d-in-float", item("linears", 0, "d_in", 16.0)),
        m("linear-weight-unknown", item("linears", 0, "weight", "no.such.weight")),
        m("linear-d-out-mismatch", lambda d: d["linears"][0].update(d_out=d["linears"][0]["d_out"] + 1)),
        m("linear-group-unknown", item("linears", 0, "group", "nowhere")),
        m("linear-missing-name", lambda d: d["linears"][0].pop("name")),
        m("group-d-in-huge", item("groups", 0, "d_in", 2**40)),
        m("group-layer-unknown", lambda d: d["groups"][0]["layers"].append("ghost")),
        m("group-layers-str", item("groups", 0, "layers", "all")),
        m("splits-negative", set_("splits", [-1])),
        m("splits-duplicate", set_("splits", [1, 1])),
        m("features-not-list", set_("features", "candidate_scoring")),
        m("export-seconds-nan-str", set_("export_seconds", "NaN")),
        # legal: an unknown (future, additive) feature name, and no splits at all
        m("feature-unknown-accepted", lambda d: d["features"].append("future_feature"), expect="accept"),
        m("no-splits-accepted", set_("splits", []), expect="accept"),
    ]

    def raw(id_, text):
        return Case(
            f"manifest/{id_}",
            "manifest",
            lambda w: w.eval_model(),
            lambda w: w.replace(w.manifest, text),
            needle="manifest.json",
        )

    cases += [
        raw("empty", b""),
        raw("truncated", b'{"format_version": 1, "architecture": "lla'),
        raw("nan-constant", b'{"format_version": 1, "vocab_size": NaN}'),
        raw("binary", bytes(range(256))),
        raw("deep-nesting", b"[" * 100000 + b"]" * 100000),
    ]
    cases.append(
        Case(
            "manifest/missing-file",
            "manifest",
            lambda w: w.eval_model(),
            lambda w: w.manifest.unlink(),
            needle="manifest.json",
        )
    )
    return cases


def safetensors_cases() -> list[Case]:
    out = []
    muts = safetensors_mutations()
    for name, fn in muts:
        out.append(
            Case(
                f"params/{name}",
                "safetensors",
                lambda w: w.open_model(),
                st_case("params", fn),
                needle="params.safetensors",
            )
        )
    for name, fn in muts[:12]:
        out.append(
            Case(
                f"ckpt-arrays/{name}",
                "safetensors",
                lambda w: w.load_run("latest"),
                st_case("ckpt", fn),
                needle="arrays.safetensors",
            )
        )

    # well-formed files whose contents do not match the manifest
    def params(fn):
        return lambda w: rewrite_arrays(w.model / "params.safetensors", fn)

    def first_param(a):
        return sorted(a)[0]

    def nan(a):
        a[first_param(a)].reshape(-1)[3] = np.nan

    def inf(a):
        a[sorted(a)[-1]].reshape(-1)[0] = np.inf

    def f64(a):
        a[first_param(a)] = a[first_param(a)].astype(np.float64)

    def f16(a):
        a[first_param(a)] = a[first_param(a)].astype(np.float16)

    def transposed(a):
        k = next(k for k in sorted(a) if a[k].ndim == 2 and a[k].shape[0] != a[k].shape[1])
        a[k] = np.ascontiguousarray(a[k].T)

    def flattened(a):
        k = next(k for k in sorted(a) if a[k].ndim == 2)
        a[k] = a[k].reshape(-1)

    def broadcastable(a):
        k = next(k for k in sorted(a) if a[k].ndim == 2)
        a[k] = a[k][:1].copy()

    def missing(a):
        del a[first_param(a)]

    def extra(a):
        a["unused.extra"] = np.zeros(3, np.float32)

    for id_, fn, expect in [
        ("nan", nan, "error"),
        ("inf", inf, "error"),
        ("float64", f64, "error"),
        ("float16", f16, "error"),
        ("transposed", transposed, "error"),
        ("flattened", flattened, "error"),
        ("broadcastable-row", broadcastable, "error"),
        ("missing-tensor", missing, "error"),
        ("extra-tensor-accepted", extra, "accept"),
    ]:
        out.append(
            Case(
                f"params-content/{id_}",
                "safetensors",
                lambda w: w.open_model(),
                params(fn),
                expect=expect,
                needle="params.safetensors",
            )
        )
    return out


RESUME_META = ("step-negative", "format-99", "other-base", "data-offset-negative", "data-list")


def meta_cases() -> list[Case]:
    def meta(which: str, fn, id_: str, *, resume: bool = False, expect: str = "error", needle: str = "meta.json"):
        def setup(w: Work) -> None:
            folder = w.latest if which == "latest" else w.run / "best"
            w.edit_json(folder / "meta.json", fn)
            if which == "both":
                w.edit_json(w.latest / "meta.json", fn)

        argv = (lambda w: w.resume()) if resume else (lambda w: w.load_run("latest"))
        if which == "best":
            argv = lambda w: w.load_run()  # noqa: E731
        return Case(f"meta/{id_}", "checkpoint-meta", argv, setup, expect=expect, needle=needle)

    def set_(k, v):
        return lambda d: d.update({k: v})

    def data(k, v):
        return lambda d: d["data"].update({k: v})

    cases = []
    for resume in (False, True):
        tag = "resume-" if resume else ""
        cases += [
            case
            for case in [
                meta("latest", set_("step", -1), f"{tag}step-negative", resume=resume),
                meta("latest", set_("step", "4"), f"{tag}step-string", resume=resume),
                meta("latest", set_("step", True), f"{tag}step-bool", resume=resume),
                meta("latest", set_("step", 3), f"{tag}step-not-folder", resume=resume),
                meta("latest", set_("format_version", 99), f"{tag}format-99", resume=resume, needle="format"),
                meta("latest", set_("format_version", "1"), f"{tag}format-string", resume=resume),
                meta("latest", set_("weights_sha256", "0" * 64), f"{tag}other-base", resume=resume, needle="base"),
                meta("latest", set_("weights_sha256", 12345), f"{tag}hash-int", resume=resume),
                meta("latest", set_("best", "high"), f"{tag}best-string", resume=resume),
                meta("latest", set_("config", [1, 2]), f"{tag}config-list", resume=resume),
                meta("latest", set_("data", [0, 1]), f"{tag}data-list", resume=resume),
                meta("latest", data("offset", -8), f"{tag}data-offset-negative", resume=resume),
                meta("latest", data("epoch", -1), f"{tag}data-epoch-negative", resume=resume),
                meta("latest", data("offset", 1.5), f"{tag}data-offset-float", resume=resume),
                meta("latest", data("offset", None), f"{tag}data-offset-null", resume=resume),
                meta("latest", lambda d: [d], f"{tag}meta-a-list", resume=resume, expect="accept", needle=""),
            ]
            # resume reads meta through the same loader as eval: a few resume rows suffice (each trains, ~1 s)
            if not resume or case.id.split("resume-")[-1] in RESUME_META
        ]
    cases += [
        meta("latest", set_("method", "mezo"), "resume-other-method", resume=True, needle="mezo"),
        meta("latest", set_("method", 7), "resume-method-int", resume=True),
        meta("latest", set_("best", math.nan), "best-nan", resume=True),
        meta("latest", data("n", 999), "resume-data-other-n", resume=True, needle="n="),
        meta("best", set_("weights_sha256", "f" * 64), "best-other-base", needle="base"),
        meta("best", set_("format_version", 0), "best-format-0", needle="format"),
        meta("best", set_("step", -5), "best-step-negative"),
    ]
    # a meta that is no longer JSON: the checkpoint counts as incomplete, the loader falls back to the older one
    cases.append(
        Case(
            "meta/latest-torn-falls-back",
            "checkpoint-meta",
            lambda w: w.load_run("latest"),
            lambda w: w.replace(w.latest / "meta.json", '{"step": 4, "da'),
            expect="accept",
        )
    )
    return cases


def arrays_cases() -> list[Case]:
    def arrays(fn, id_, *, resume=False, expect="error", needle="checkpoint", best=False):
        def setup(w: Work) -> None:
            folder = w.run / "best" if best else w.latest
            rewrite_arrays(folder / "arrays.safetensors", fn)

        if resume:
            argv = lambda w: w.resume()  # noqa: E731
        elif best:
            argv = lambda w: w.load_run()  # noqa: E731
        else:
            argv = lambda w: w.load_run("latest")  # noqa: E731
        return Case(f"ckpt-content/{id_}", "checkpoint-arrays", argv, setup, expect=expect, needle=needle)

    def key(a, prefix):
        return next(k for k in sorted(a) if k.startswith(prefix))

    def nan_q(a):
        a[key(a, "adapter.q::")].reshape(-1)[0] = np.nan

    def inf_method(a):
        k = next(k for k in sorted(a) if k.startswith("method/") and a[k].dtype.kind == "f" and a[k].size)
        a[k].reshape(-1)[0] = np.inf

    def q_extra_row(a):
        k = key(a, "adapter.q::")
        a[k] = np.concatenate([a[k], a[k][:1]])

    def q_one_row(a):
        k = key(a, "adapter.q::")
        a[k] = a[k][:1].copy()

    def q_rank_mismatch(a):
        k = key(a, "adapter.q::")
        a[k] = np.concatenate([a[k], a[k]], axis=1)

    def q_1d(a):
        k = key(a, "adapter.q::")
        a[k] = a[k].reshape(-1)

    def q_int(a):
        k = key(a, "adapter.q::")
        a[k] = a[k].astype(np.int32)

    def p_missing(a):
        del a[key(a, "adapter.p::")]

    def unknown_layer(a):
        k = key(a, "adapter.q::")
        a["adapter.q::no.such.layer"] = a[k].copy()
        a["adapter.p::no.such.layer"] = a[key(a, "adapter.p::")].copy()

    def foreign_param(a):
        a["param/no.such.weight"] = np.zeros((3, 3), np.float32)

    out = [
        arrays(nan_q, "adapter-nan"),
        arrays(q_extra_row, "adapter-extra-row"),
        arrays(q_one_row, "adapter-broadcastable"),
        arrays(q_rank_mismatch, "adapter-rank-mismatch"),
        arrays(q_1d, "adapter-1d"),
        arrays(q_int, "adapter-int"),
        arrays(unknown_layer, "adapter-unknown-layer"),
        arrays(foreign_param, "param-of-another-model"),
        arrays(nan_q, "resume-adapter-nan", resume=True),
        arrays(q_one_row, "resume-adapter-broadcastable", resume=True),
    ]
    out += [
        arrays(inf_method, "resume-method-state-inf", resume=True),
        arrays(p_missing, "adapter-p-missing"),
        arrays(nan_q, "best-adapter-nan", best=True),
    ]
    return out


def data_cases() -> list[Case]:
    def data(id_, name, content, expect="error", needle=None, extra=()):
        def setup(w: Work) -> None:
            path = w.root / name
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            w.data = path

        return Case(
            f"data/{id_}",
            "data",
            lambda w: w.eval_model(*extra),
            setup,
            expect=expect,
            needle=needle if needle is not None else name,
            guard=("model",),
        )

    good = "".join(f"the film was fun {i},pos\nthe film was dull {i},neg\n" for i in range(12))
    jgood = "".join(
        json.dumps({"text": f"fun {i}", "label": "pos"})
        + "\n"
        + json.dumps({"text": f"dull {i}", "label": "neg"})
        + "\n"
        for i in range(12)
    )
    return [
        data("empty-csv", "empty.csv", ""),
        data("header-only", "header.csv", "text,label\n"),
        data("no-label-column", "nolabel.csv", "text,stars\n" + good),
        data("ragged-row", "ragged.csv", "text,label\n" + good + "a,b,c\n"),
        data("nul-byte", "nul.csv", "text,label\n" + good + "bad\0row,pos\n"),
        data("invalid-utf8", "latin.csv", b"text,label\n" + good.encode() + b"caf\xe9 \xff,pos\n"),
        data("binary", "binary.csv", bytes(range(256)) * 4),
        data("unclosed-quote", "quote.csv", 'text,label\n"never closed,pos\n' + good),
        data("empty-text", "emptytext.csv", "text,label\n" + good + ",pos\n"),
        data("one-class", "oneclass.csv", "text,label\n" + "".join(f"fun {i},pos\n" for i in range(20))),
        data("label-not-in-labels", "unknown.csv", "text,label\n" + good + "meh,neutral\n"),
        data("unknown-extension", "data.xlsx", "text,label\n" + good),
        data("jsonl-broken-line", "broken.jsonl", jgood + "{broken\n"),
        data("jsonl-array-row", "array.jsonl", jgood + "[1, 2]\n"),
        data("jsonl-nested-value", "nested.jsonl", jgood + '{"text": {"a": 1}, "label": "pos"}\n'),
        data("jsonl-null-label", "null.jsonl", jgood + '{"text": "x", "label": null}\n'),
        data("jsonl-bool-label", "bool.jsonl", jgood + '{"text": "x", "label": true}\n'),
        data("jsonl-invalid-utf8", "bad.jsonl", jgood.encode() + b'{"text": "\xff", "label": "pos"}\n'),
        data("jsonl-nan-text", "nan.jsonl", jgood + '{"text": NaN, "label": "pos"}\n'),
        data("bom-accepted", "bom.csv", "\ufefftext,label\n" + good, expect="accept"),
        data("crlf-accepted", "crlf.csv", ("text,label\n" + good).replace("\n", "\r\n"), expect="accept"),
        data("tsv-accepted", "tabs.tsv", ("text\tlabel\n" + good.replace(",", "\t")), expect="accept"),
        data("long-field-accepted", "long.csv", "text,label\n" + good + ("word " * 5000) + ",pos\n", expect="accept"),
        data(
            "skip-bad-rows-accepted",
            "skip.csv",
            "text,label\n" + good + "a,b,c\n",
            expect="accept",
            extra=("--skip-bad-rows",),
        ),
        data("skip-bad-rows-all-bad", "allbad.csv", "text,label\n" + "a,b,c\n" * 5, extra=("--skip-bad-rows",)),
        data(
            "jsonl-numbers-accepted",
            "nums.jsonl",
            "".join(json.dumps({"text": i, "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(24)),
            expect="accept",
        ),
    ]


def _dir_data(w: Work) -> None:
    (w.root / "adir.csv").mkdir()
    w.data = w.root / "adir.csv"


def _missing_data(w: Work) -> None:
    w.data = w.root / "missing.csv"


def cli_cases() -> list[Case]:
    def flag(id_, extra, needle, expect="error", method="zo-act"):
        def argv(w: Work) -> list[str]:
            a = w.train(None, *extra)
            a[a.index("--method") + 1] = method
            return a

        return Case(
            f"cli/{id_}",
            "cli",
            argv,
            expect=expect,
            needle=needle,
            guard=("model", "run"),
            absent=lambda w: w.root / "new-run",
        )

    cases = [
        flag("steps-zero", ["--steps", "0"], "--steps"),
        flag("steps-negative", ["--steps", "-3"], "--steps"),
        flag("steps-text", ["--steps", "many"], "--steps"),
        flag("steps-huge", ["--steps", str(2**80)], "--steps"),
        flag("batch-zero", ["--batch-size", "0"], "--batch-size"),
        flag("save-every-zero", ["--save-every", "0"], "--save-every"),
        flag("eval-every-negative", ["--eval-every", "-1"], "--eval-every"),
        flag("k-negative", ["--k", "-1"], "--k"),
        flag("seed-negative", ["--seed", "-1"], "--seed"),
        flag("seed-huge", ["--seed", str(2**70)], "--seed"),
        flag("lr-inf", ["--lr", "inf"], "--lr"),
        flag("lr-nan", ["--lr", "nan"], "--lr"),
        flag("lr-zero", ["--lr", "0"], "--lr"),
        flag("lr-negative", ["--lr", "-1e-3"], "--lr"),
        flag("mu-inf", ["--mu", "inf"], "--mu", method="lozo"),
        flag("mu-nan", ["--mu", "nan"], "--mu", method="mezo"),
        flag("mu-zero-divides", ["--mu", "0"], "--mu", method="lozo"),
        flag("mu-negative", ["--mu", "-0.1"], "--mu", method="subzero"),
        flag("rank-huge", ["--rank", str(10**9)], "--rank", method="lozo"),
        flag("rank-zero", ["--rank", "0"], "--rank", method="lozo"),
        flag("queries-zero", ["--queries", "0"], "--queries", method="lozo"),
        flag("nu-zero", ["--nu", "0"], "--nu", method="lozo"),
        flag("knob-of-other-method", ["--nu", "5"], "--nu", method="mezo"),
        flag("momentum-one", ["--momentum", "1.0", "--optimizer", "sgd"], "--momentum"),
        flag("weight-decay-negative", ["--weight-decay", "-1"], "--weight-decay"),
        flag("warmup-past-steps", ["--warmup", "50"], "--warmup"),
        flag("schedule-unknown", ["--schedule", "zigzag"], "--schedule"),
        flag("optimizer-unknown", ["--optimizer", "lion"], "--optimizer"),
        flag("method-unknown", [], "method", method="nope"),
        flag("threads-negative", ["--threads", "-2"], "--threads"),
        flag("micro-batch-negative", ["--micro-batch", "-1"], "--micro-batch"),
        flag("max-len-tiny", ["--max-len", "3"], "--max-len"),
        flag("max-len-huge", ["--max-len", str(10**9)], "--max-len"),
        flag("layers-garbage", ["--layers", "zz"], "--layers"),
        flag("layers-top-zero", ["--layers", "top:0"], "--layers"),
        flag("layers-out-of-range", ["--layers", "90-99"], "--layers"),
        flag("balance-unknown", ["--balance", "maybe"], "--balance"),
        flag("objective-unknown", ["--objective", "vibes"], "--objective"),
        flag("provider-unknown", ["--provider", "tpu9"], "tpu9"),
        flag("provider-option-bad", ["--provider-option", "novalue"], "novalue"),
        flag("labels-same-word", ["--labels", "neg=good,pos=good"], "good"),
        flag("labels-garbage", ["--labels", "==,,"], "label"),
        flag("template-unknown-field", ["--template", "Review: {review} Label:"], "review"),
        # a file's candidate prompts are built from its --labels, so auto + labels is a valid choice for --data
        # (a built-in task's refusal is tests/zo_edge/test_config.py's)
        flag("template-auto-with-labels-accepted", ["--template", "auto"], "", expect="accept"),
        flag("task-and-data", ["--task", "trec"], "--data"),
        Case(
            "cli/out-is-a-file",
            "cli",
            lambda w: w.train(w.root / "afile"),
            lambda w: (w.root / "afile").write_text("mine"),
            needle="afile",
            guard=("model", "run"),
        ),
        Case(
            "cli/out-foreign-folder",
            "cli",
            lambda w: w.train(w.root / "mine"),
            _foreign_folder,
            needle="mine",
            guard=("model", "run", "mine"),
        ),
        Case("cli/out-existing-run-no-resume", "cli", lambda w: w.train(w.run), needle="--resume"),
        Case(
            "cli/resume-empty-folder",
            "cli",
            lambda w: w.train(w.root / "new-run", "--resume"),
            needle="--resume",
            absent=lambda w: w.root / "new-run" / "ckpt_00000002",
        ),
        Case(
            "cli/data-missing",
            "cli",
            lambda w: w.train(None),
            _missing_data,
            needle="missing.csv",
            absent=lambda w: w.root / "new-run",
        ),
        Case(
            "cli/data-directory",
            "cli",
            lambda w: w.train(None),
            _dir_data,
            needle="adir.csv",
            absent=lambda w: w.root / "new-run",
        ),
        Case("cli/eval-checkpoint-unknown", "cli", lambda w: w.eval_run("--checkpoint", "oldest"), needle="oldest"),
        Case("cli/eval-split-unknown", "cli", lambda w: w.eval_run("--split", "train"), needle="--split"),
        Case("cli/eval-run-not-a-run", "cli", lambda w: ["eval", "--run", str(w.model)], needle="config.json"),
        Case(
            "cli/eval-examples-negative",
            "cli",
            lambda w: w.eval_run("--eval-examples", "-5"),
            needle="--eval-examples",
        ),
    ]
    return cases


def _foreign_folder(w: Work) -> None:
    (w.root / "mine").mkdir()
    (w.root / "mine" / "thesis.txt").write_text("do not delete")


def toml_cases() -> list[Case]:
    def toml(id_, text, needle, expect="error"):
        def setup(w: Work) -> None:
            (w.root / "c.toml").write_text(text)

        return Case(
            f"toml/{id_}",
            "toml",
            lambda w: w.train(None, "--config", str(w.root / "c.toml")),
            setup,
            expect=expect,
            needle=needle,
            absent=lambda w: w.root / "new-run",
        )

    return [
        toml("invalid", "steps = = 3\n", "c.toml"),
        toml("steps-bool", "steps = true\n", "steps"),
        toml("steps-float", "steps = 2.5\n", "steps"),
        toml("steps-string", 'steps = "2"\n', "steps"),
        toml("batch-list", "batch_size = [4]\n", "batch_size"),
        toml("lr-string", '[optim]\nlr = "fast"\n', "lr"),
        toml("lr-inf", "[optim]\nlr = inf\n", "--lr"),
        toml("lr-nan", "[optim]\nlr = nan\n", "--lr"),
        toml("mu-inf", '[method]\nname = "lozo"\nmu = inf\n', "--mu"),
        toml("mu-bool", '[method]\nname = "lozo"\nmu = true\n', "mu"),
        toml("nu-float", '[method]\nname = "lozo"\nnu = 1.5\n', "nu"),
        toml("method-int", "method = 5\n", "method"),
        toml("method-knob-unknown", '[method]\nname = "zo-act"\nbogus = 1\n', "--bogus"),
        toml("unknown-top-key", "stepz = 3\n", "stepz"),
        toml("optim-key-at-top", "lr = 0.1\n", "[optim]"),
        toml("unknown-optim-key", "[optim]\nbeta9 = 1\n", "beta9"),
        toml("optim-not-table", 'optim = "adam"\n', "optim"),
        toml("unknown-method-knob", '[method]\nname = "zo-act"\nnu = 3\n', "--nu"),
        Case(
            "toml/missing-file",
            "toml",
            lambda w: w.train(None, "--config", str(w.root / "none.toml")),
            needle="none.toml",
            absent=lambda w: w.root / "new-run",
        ),
        Case(
            "toml/a-directory",
            "toml",
            lambda w: w.train(None, "--config", str(w.root)),
            needle="config",
            absent=lambda w: w.root / "new-run",
        ),
        toml("good-accepted", 'steps = 1\n[method]\nname = "zo-act"\n[optim]\nlr = 0.001\n', "", expect="accept"),
    ]


def path_cases() -> list[Case]:
    def tok(id_, name, needle="tokenizer_files"):
        return Case(
            f"paths/{id_}",
            "paths",
            lambda w: w.eval_model(),
            lambda w: w.edit_json(w.manifest, lambda d: d["tokenizer_files"].append(name)),
            needle=needle,
        )

    def outside_symlink(w: Work) -> None:
        secret = w.root / "secret.json"
        secret.write_text("{}")
        (w.model / "tokenizer_config.json").unlink()
        os.symlink(secret, w.model / "tokenizer_config.json")

    def graph_symlink(w: Work) -> None:
        elsewhere = w.root / "elsewhere"
        elsewhere.mkdir()
        shutil.copy2(w.model / "model.onnx", elsewhere / "model.onnx")
        (w.model / "model.onnx").unlink()
        os.symlink(elsewhere / "model.onnx", w.model / "model.onnx")

    def external_data(location: str) -> Callable[[Work], None]:
        def setup(w: Work) -> None:
            import onnx

            (w.root / "outside.bin").write_bytes(b"\0" * 64)
            m = onnx.load(str(w.model / "model.onnx"), load_external_data=False)
            t = m.graph.initializer.add(name="evil.external", data_type=onnx.TensorProto.FLOAT, dims=[16])
            t.data_location = onnx.TensorProto.EXTERNAL
            t.external_data.add(key="location", value=location)
            (w.model / "model.onnx").unlink()
            onnx.save(m, str(w.model / "model.onnx"))

        return setup

    def ckpt_symlink(w: Work) -> None:
        elsewhere = w.root / "elsewhere-ckpt"
        shutil.copytree(w.latest, elsewhere)
        target = w.latest
        shutil.rmtree(target)
        os.symlink(elsewhere, target)

    def graph_truncated(w: Work) -> None:
        raw = (w.model / "model.onnx").read_bytes()
        w.replace(w.model / "model.onnx", raw[: len(raw) // 3])

    def graph_garbage(w: Work) -> None:
        w.replace(w.model / "model.onnx", b"\x08\x07" + bytes(range(256)) * 8)

    return [
        tok("tokenizer-dotdot", "../../etc/passwd"),
        tok("tokenizer-absolute", "/etc/passwd"),
        tok("tokenizer-subdir", "sub/tokenizer.json"),
        tok("tokenizer-hidden", ".hidden"),
        tok("tokenizer-not-str", 7),  # type: ignore[arg-type]
        Case(
            "paths/tokenizer-symlink-outside",
            "paths",
            lambda w: w.open_model(),
            outside_symlink,
            needle="tokenizer_config.json",
        ),
        Case("paths/graph-symlink-outside", "paths", lambda w: w.open_model(), graph_symlink, needle="model.onnx"),
        Case(
            "paths/onnx-external-dotdot",
            "paths",
            lambda w: w.open_model(),
            external_data("../outside.bin"),
            needle="external data",
        ),
        Case(
            "paths/onnx-external-absolute",
            "paths",
            lambda w: w.open_model(),
            external_data(str(Path("/etc/hostname"))),
            needle="external data",
        ),
        Case("paths/onnx-truncated", "paths", lambda w: w.open_model(), graph_truncated, needle="model.onnx"),
        Case("paths/onnx-garbage", "paths", lambda w: w.open_model(), graph_garbage, needle="model.onnx"),
        Case(
            "paths/ckpt-symlink-outside",
            "paths",
            lambda w: w.load_run("latest"),
            ckpt_symlink,
            needle="outside",
        ),
        Case(
            "paths/latest-dotdot-falls-back",
            "paths",
            lambda w: w.eval_run("--checkpoint", "latest"),
            lambda w: w.replace(w.run / "latest", "../../etc\n"),
            expect="accept",
        ),
        Case(
            "paths/merge-tokenizer-dotdot",
            "paths",
            lambda w: ["merge", str(w.run), "--out", str(w.root / "m"), "--no-onnx"],
            lambda w: _point_run_at(w, "../../etc/passwd"),
            needle="tokenizer_files",
            absent=lambda w: w.root / "m",
        ),
    ]


def _point_run_at(w: Work, tokenizer_name: str) -> None:
    """The run's config names the scratch model, whose manifest names a tokenizer file outside it."""
    w.edit_json(w.run / "config.json", lambda d: d.update(model=str(w.model)))
    w.edit_json(w.manifest, lambda d: d["tokenizer_files"].append(tokenizer_name))


def disk_cases() -> list[Case]:
    def failing_write(code: int, after: int = 0):
        """Every checkpoint/atomic file write after the first ``after`` raises OSError(code)."""

        def patch(mp) -> None:
            from runtime import atomic, checkpoint

            calls = {"n": 0}
            real = atomic.write_file

            def write(path, data):
                calls["n"] += 1
                if calls["n"] > after:
                    raise OSError(code, os.strerror(code), str(path))
                real(path, data)

            mp.setattr(checkpoint, "write_file", write)
            mp.setattr(atomic, "write_file", write)

        return patch

    def disk(id_, code, after=0, needle="MiB"):
        return Case(
            f"disk/{id_}",
            "disk",
            lambda w: w.resume(),
            patch=failing_write(code, after),
            needle=needle,
            guard=("model", "ckpts"),
        )

    cases = [
        disk("enospc-resume-save", errno.ENOSPC, needle="MiB"),
        disk("enospc-after-arrays", errno.ENOSPC, after=1, needle="MiB"),
        disk("erofs-resume-save", errno.EROFS, needle="read-only"),
        disk("eacces-resume-save", errno.EACCES, needle="permission"),
        disk("edquot-resume-save", errno.EDQUOT, needle="MiB"),
    ]
    if os.geteuid() != 0:  # root writes into a chmod'ed folder anyway
        cases.append(
            Case(
                "disk/read-only-run-folder",
                "disk",
                lambda w: w.resume(),
                lambda w: _chmod_tree(w.run, 0o555),
                needle="permission",
                guard=("model", "ckpts"),
            )
        )
    return cases


def _chmod_tree(root: Path, mode: int) -> None:
    for folder, _, _ in os.walk(root):
        os.chmod(folder, mode)


def all_cases() -> list[Case]:
    cases = [
        *manifest_cases(),
        *safetensors_cases(),
        *meta_cases(),
        *arrays_cases(),
        *data_cases(),
        Case("data/directory", "data", lambda w: w.eval_model(), _dir_data, needle="adir.csv", guard=("model",)),
        Case("data/missing", "data", lambda w: w.eval_model(), _missing_data, needle="missing.csv", guard=("model",)),
        *cli_cases(),
        *toml_cases(),
        *path_cases(),
        *disk_cases(),
    ]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "corpus case ids must be unique"
    return cases
