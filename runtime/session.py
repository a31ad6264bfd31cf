"""GraphSession: one exported training graph on one execution provider, with its parameters bound zero-copy.

The trainable tensors live in numpy (``session.params``) and are bound once with ``OrtValue.ortvalue_from_numpy``
+ IOBinding; onnxruntime reads that very memory, so in-place numpy updates are seen by the next run without
re-binding (measured on the prototype; ``tests/runtime/test_session.py`` checks it). Every port has a bound
default that switches it off (rank-0 P/Q, a [1,1,1] zero noise, zero probe rows); a forward overrides only the
ports it names and restores the defaults afterwards, so a pass never inherits another pass's perturbation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from runtime import contract
from runtime.batch import Batch
from runtime.contract import Manifest
from runtime.params import check_params
from runtime.paths import check_graph_file
from runtime.providers import computed_precision, full_name, resolve_providers
from runtime.safetensors_io import read_safetensors_writable

__all__ = ["FUSED_ATTENTION_PROVIDERS", "GraphSession"]

#: providers with onnxruntime's com.microsoft GroupQueryAttention kernel (``--attention fused`` exports)
FUSED_ATTENTION_PROVIDERS = frozenset({"CPUExecutionProvider", "CUDAExecutionProvider"})

#: The order onnxruntime runs the graph's nodes in. Its DEFAULT order is a reverse depth-first walk from the graph's
#: outputs, which runs each activation group's probe nodes only after the whole forward that feeds the loss, so every
#: group's input stayed alive to the end, probes on or off (~13 MB a block at [16, 64], the growth RESULTS.md §10.5
#: put on the probe family). PRIORITY_BASED follows the traced order, where a probe runs right after its input is
#: made: same values bit for bit, a lower peak and a faster forward (RESULTS.md §11). ``benchmarks/execution_order.py``
#: sets this to DEFAULT for the side-by-side "before".
EXECUTION_ORDER = ort.ExecutionOrder.PRIORITY_BASED


class GraphSession:
    """Loads ``model.onnx`` + ``manifest.json`` (+ ``params.safetensors``) and runs forwards with ports."""

    def __init__(
        self,
        model_dir: str | Path,
        provider: str = "cpu",
        *,
        provider_options: Mapping[str, str] | Mapping[str, Mapping[str, str]] | None = None,
        fallback: tuple[str, ...] = (),
        threads: int | None = None,
        graph_file: str = contract.GRAPH_FILE,
        params: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``graph_file``: the model folder's graph to run (``model.onnx``, or a split graph ``prefix_S.onnx`` /
        ``suffix_S.onnx``: runtime/prefix_cache.py); only the inputs that graph has are bound. ``params``: another
        session's parameter arrays to bind instead of reading ``params.safetensors`` again (the split graphs and
        the full graph then share one copy, and in-place updates are seen by all). ``provider_options``: either
        one flat ``{key: value}`` dict for the first provider (the old form), or ``{provider: {key: value}}`` for
        any provider of the chain, named short (``openvino``) or in full, as
        ``runtime.providers.parse_provider_options`` returns it; options for providers not in the chain are
        ignored (a fallback chain may not reach them)."""
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.load(self.model_dir)
        self.providers = resolve_providers(provider, fallback)
        if "OpenVINOExecutionProvider" in self.providers and not self.manifest.has(contract.FEATURE_MASKED_POSITIONS):
            raise contract.ManifestError(
                f"{self.model_dir} was exported before the position fix that OpenVINO needs (it would run with RoPE "
                "off there); re-export it with `zo-edge export --force`"
            )
        if self.manifest.has(contract.FEATURE_FUSED_ATTENTION) and self.providers[0] not in FUSED_ATTENTION_PROVIDERS:
            raise contract.ManifestError(
                f"{self.model_dir} was exported with --attention fused (onnxruntime's com.microsoft "
                f"GroupQueryAttention), which {self.providers[0]} does not run; re-export it with --attention eager"
            )
        #: the options each provider of the chain was created with, by full onnxruntime name
        self.provider_options: dict[str, dict[str, str]] = self._options_per_provider(provider_options)
        #: the precision each provider of the chain computes in (see ``runtime.providers.computed_precision``)
        self.precisions: dict[str, str] = {
            p: computed_precision(p, self.provider_options[p], self.manifest.dtype) for p in self.providers
        }
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Memory patterns pre-plan one arena block per input shape; with our varying batch shapes they held ~400 MB
        # more at the same speed on SmolLM2-135M (1.54 vs 1.14 GB peak fp32, 1.31 vs 0.91 GB INT4; see RESULTS.md).
        opts.enable_mem_pattern = False
        opts.execution_order = EXECUTION_ORDER
        if threads:
            opts.intra_op_num_threads = int(threads)
        provider_opts = [self.provider_options[p] for p in self.providers]
        graph = self.model_dir / graph_file
        if not graph.is_file():
            raise contract.ManifestError(f"{graph} is missing; re-export the model with `zo-edge export --force`")
        check_graph_file(self.model_dir, graph_file)  # inside the folder, external data too; parses (runtime.paths)
        self.graph_file = graph_file
        try:
            self.session = ort.InferenceSession(
                str(graph), opts, providers=self.providers, provider_options=provider_opts
            )
        except (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile) as e:
            first = str(e).strip().splitlines()[0][:300]  # a damaged graph file: one line, not the C++ context
            raise contract.ManifestError(f"{graph} does not load ({first}); re-export it with --force") from None
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.params: dict[str, np.ndarray] = self._load_params() if params is None else params
        self._io = self.session.io_binding()
        self._keep: dict[str, ort.OrtValue] = {}  # OrtValues must outlive the binding
        for key, arr in self.params.items():
            if contract.param_name(key) in self._input_names:
                self._bind(contract.param_name(key), arr)
        self._defaults = {k: v for k, v in self._default_ports().items() if k in self._input_names}
        for name, arr in self._defaults.items():
            self._bind(name, arr)
        #: a suffix graph's entry: fed by every forward (no default: a forgotten feed must fail, not run on zeros)
        self.takes_hidden = contract.INPUT_HIDDEN in self._input_names

    # --- setup ---------------------------------------------------------------------------------------------
    def _options_per_provider(
        self, options: Mapping[str, str] | Mapping[str, Mapping[str, str]] | None
    ) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {p: {} for p in self.providers}
        if not options:
            return out
        if all(isinstance(v, Mapping) for v in options.values()):
            for name, opts in options.items():
                if full_name(name) in out:
                    out[full_name(name)].update({str(k): str(v) for k, v in opts.items()})
            return out
        out[self.providers[0]] = {str(k): str(v) for k, v in options.items()}
        return out

    @property
    def precision(self) -> str:
        """What the first provider (the one that runs the graph) computes in, e.g. ``fp32`` or ``fp16``."""
        return self.precisions[self.providers[0]]

    def _load_params(self) -> dict[str, np.ndarray]:
        """All params as writable views into ONE buffer read straight from params.safetensors.

        safetensors' numpy loader returns read-only views of a bytes object, so making them writable copied the
        model once more: 2x the model at load and ~1.1 GB resident for SmolLM2-135M. Reading the file's data
        section into one bytearray and viewing it costs exactly the model's size.
        """
        if not self.manifest.params:
            return {}
        arrays = read_safetensors_writable(self.model_dir / contract.PARAMS_FILE)
        check_params(self.manifest.params, arrays, self.model_dir / contract.PARAMS_FILE)  # dtype, shape, finite
        return {p.name: arrays[p.name] for p in self.manifest.params}

    def _default_ports(self) -> dict[str, np.ndarray]:
        m = self.manifest
        d: dict[str, np.ndarray] = {contract.INPUT_PROBE_ROWS: np.zeros(0, np.int64)}
        if m.has(contract.FEATURE_CANDIDATE_SCORING):  # C = 0: no candidate columns gathered
            d[contract.INPUT_CANDIDATE_IDS] = np.zeros(0, np.int64)
        for lin in m.linears:
            d[contract.port_p(lin.name)] = np.zeros((lin.d_in, 0), np.float32)
            d[contract.port_q(lin.name)] = np.zeros((lin.d_out, 0), np.float32)
            d[contract.port_noise(lin.name)] = np.zeros((1, 1, 1), np.float32)
        for g in m.groups:
            d[contract.probe_omega(g.name)] = np.zeros((g.d_in, m.basis_rank), np.float32)
            d[contract.probe_sketch_omega(g.name)] = np.zeros((g.d_in, 0), np.float32)
            d[contract.probe_act_rows(g.name)] = np.zeros(0, np.int64)
        return d

    def _bind(self, name: str, arr: np.ndarray) -> None:
        value = ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0)
        self._keep[name] = value
        self._io.bind_ortvalue_input(name, value)

    # --- running -------------------------------------------------------------------------------------------
    def forward(
        self,
        batch: Batch,
        ports: Mapping[str, np.ndarray] | None = None,
        fetch: tuple[str, ...] = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT),
    ) -> dict[str, np.ndarray]:
        """One pass. ``ports`` maps contract names (port_p(l), probe_omega(g), probe_rows, ...) to arrays."""
        if contract.INPUT_IDS in self._input_names:  # the candidates' head reads no tokens
            self._bind(contract.INPUT_IDS, batch.input_ids)
        self._bind(contract.INPUT_ATTENTION_MASK, batch.attention_mask)
        if contract.INPUT_LOSS_MASK in self._input_names:  # the prefix graph has no loss head
            self._bind(contract.INPUT_LOSS_MASK, batch.loss_mask)
        ports = dict(ports or {})
        if self.takes_hidden:
            hidden = ports.pop(contract.INPUT_HIDDEN, None)
            assert hidden is not None, f"{self.graph_file} needs {contract.INPUT_HIDDEN} (runtime.prefix_cache)"
            self._bind(contract.INPUT_HIDDEN, np.ascontiguousarray(hidden, np.float32))
        if contract.INPUT_CANDIDATE_IDS in self._defaults:
            off = self._defaults[contract.INPUT_CANDIDATE_IDS]
            self._bind(contract.INPUT_CANDIDATE_IDS, off if batch.candidate_ids is None else batch.candidate_ids)
        elif batch.candidate_ids is not None and contract.INPUT_LOSS_MASK in self._input_names:
            raise contract.ManifestError(
                f"{self.model_dir} was exported without candidate scoring; re-export it with `zo-edge export --force`"
            )
        for name, arr in ports.items():
            if name not in self._defaults:
                raise KeyError(f"{name!r} is not a port of this graph (see manifest.json)")
            want = self._defaults[name].dtype
            self._bind(name, np.ascontiguousarray(arr, dtype=want))
        self._io.clear_binding_outputs()
        for name in fetch:
            self._io.bind_output(name, "cpu")
        try:
            self.session.run_with_iobinding(self._io)
        except Exception as e:  # onnxruntime raises its own types with multi-line C++ context
            first = str(e).strip().splitlines()[0][:300]
            raise RuntimeError(f"forward failed on {self.providers[0]}: {first}") from None
        finally:
            for name in ports:
                self._bind(name, self._defaults[name])
        return dict(zip(fetch, self._io.copy_outputs_to_cpu(), strict=True))

    def losses(self, batch: Batch, ports: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Per-row summed NLL [B] (float64 for accumulation downstream)."""
        return self.forward(batch, ports)[contract.OUTPUT_ROW_NLL].astype(np.float64)

    @property
    def threads(self) -> int:
        return self.session.get_session_options().intra_op_num_threads or os.cpu_count() or 1
