"""PortedLinear: a targeted linear layer with its zeroth-order ports, and the context that feeds them while tracing.

Like peft's ``lora.Linear`` the base weight stays untouched and only a side path is added. The module is swapped
into the Hugging Face model in place of ``nn.Linear`` (or GPT-2's ``Conv1D``) before ``torch.onnx.export``; the ports
are graph inputs, so nothing about a perturbation is baked into the graph.

One PortedLinear, as emitted (names from runtime.contract)::

    x [B,T,d_in] ──MatMul(W [d_in,d_out])──(+bias)──┬──Add──Add──▶ y
      │                                              │    ▲    ▲
      ├──MatMul(zo.P [d_in,r])──MatMul(zo.Qᵀ [r,d_out])┘    │
      │                                         zo.noise ───┘  (broadcast; Zoop's output perturbation)
      └──(group leader only) probe: Gather(probe_rows) ──▶ power iteration / sketch ──▶ probe.* outputs
                                    Gather(act_rows)   ──▶ probe.act

The weight is held as [d_in, d_out] so the graph multiplies without a transpose and MatMulNBits can quantize it.
Each side path belongs to a port family (runtime.contract ``PORT_FAMILIES``: P/Q ``lowrank``, ``noise``, the
probes ``probe``); the context names the families the export keeps (``zo-edge export --ports``), and a family left
out is not traced at all: no input, no node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from runtime import contract

__all__ = ["PortContext", "PortedLinear", "feeding", "orthonormalize_columns", "power_iteration"]

# Guards every normalisation in the probe so that a disabled probe (zero rows -> all-zero sketches) yields zeros,
# not NaN. Far below any real activation energy (squared norms of real activations are >= 1e-6 in practice).
_EPS = 1e-30


class PortContext:
    """Tensors for one traced forward: inputs by graph name, and the probe outputs the layers produce."""

    def __init__(
        self,
        inputs: dict[str, torch.Tensor],
        input_ids: torch.Tensor,
        probe_rows: torch.Tensor,
        power_iters: int,
        ports: frozenset[str] = frozenset(contract.PORT_FAMILIES),
    ) -> None:
        self.inputs = inputs
        self.batch, self.seq = input_ids.shape[0], input_ids.shape[1]
        self.probe_rows = probe_rows
        self.power_iters = power_iters
        #: the port families traced (``contract.PORTS_*``); the others get no input and no node
        self.ports = ports
        self.outputs: dict[str, torch.Tensor] = {}


_ACTIVE: list[PortContext] = []


@contextlib.contextmanager
def feeding(ctx: PortContext) -> Iterator[PortContext]:
    """Make ``ctx`` the port source of every PortedLinear for the duration of one forward (restored on exit)."""
    _ACTIVE.append(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.pop()


def orthonormalize_columns(y: torch.Tensor) -> torch.Tensor:
    """Modified Gram-Schmidt, unrolled over the (static) columns of ``y`` [d, r].

    ONNX has no QR op; r is small (the basis rank, default 1), so an unrolled MGS is a handful of nodes. Zero
    columns stay zero (eps-guarded), which is what a disabled probe produces.
    """
    cols: list[torch.Tensor] = []
    for j in range(y.shape[1]):
        v = y[:, j : j + 1]
        for q in cols:
            v = v - q * (q * v).sum(dim=0, keepdim=True)
        v = v / torch.sqrt((v * v).sum(dim=0, keepdim=True) + _EPS)
        cols.append(v)
    return torch.cat(cols, dim=1)


def power_iteration(x: torch.Tensor, omega: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r right singular subspace of ``x`` [M, d] by ``iters`` rounds of V <- orth(Xᵀ X V), from ``omega``.

    Returns (V [d, r] orthonormal, G = (X V)ᵀ (X V) [r, r]); the caller's Rayleigh-Ritz (eigh of G) orders V into
    individual principal directions. Xᵀ(X V) is computed right to left so nothing of size d x d is ever formed.
    """
    v = orthonormalize_columns(omega)
    for _ in range(iters):
        v = orthonormalize_columns(torch.matmul(x.transpose(0, 1), torch.matmul(x, v)))
    xv = torch.matmul(x, v)
    return v, torch.matmul(xv.transpose(0, 1), xv)


class PortedLinear(nn.Module):
    """y = x W (+ b) + (x P) Qᵀ + noise, with W stored [d_in, d_out]; the group leader also runs the probes.

    Args:
        weight_in_out: the base weight already in [d_in, d_out] layout (nn.Linear's weight transposed; Conv1D as is).
        bias: the base bias or None.
        name: layer id used in every port name (runtime.contract.port_p(name) ...).
        group: activation group id; ``leader`` layers compute the group's probes from their input.
        basis_rank: static number of power-iteration directions of the in-graph basis.
    """

    def __init__(
        self,
        weight_in_out: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        name: str,
        group: str,
        leader: bool,
        basis_rank: int,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight_in_out.detach().contiguous(), requires_grad=weight_in_out.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.name = name
        self.group = group
        self.leader = leader
        self.basis_rank = basis_rank
        self.d_in, self.d_out = self.weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight)
        if self.bias is not None:
            y = y + self.bias
        if not _ACTIVE:  # plain torch use (reference computations in tests): just the base layer
            return y
        ctx = _ACTIVE[-1]
        if contract.PORTS_LOWRANK in ctx.ports:
            p = ctx.inputs[contract.port_p(self.name)]
            q = ctx.inputs[contract.port_q(self.name)]
            y = y + torch.matmul(torch.matmul(x, p), q.transpose(0, 1))
        if contract.PORTS_NOISE in ctx.ports:
            # Some families (OPT's MLP) flatten tokens to [B*T, d]; noise is shaped per token [B, T, d_out].
            noisy = y.reshape(ctx.batch, ctx.seq, self.d_out) + ctx.inputs[contract.port_noise(self.name)]
            y = noisy.reshape(y.shape)
        if self.leader and contract.PORTS_PROBE in ctx.ports:
            self._probe(x, ctx)
        return y

    def _probe(self, x: torch.Tensor, ctx: PortContext) -> None:
        flat = x.reshape(-1, self.d_in)
        rows = flat.index_select(0, ctx.probe_rows)  # [M, d_in]; M = 0 switches the probe off
        basis, gram = power_iteration(rows, ctx.inputs[contract.probe_omega(self.group)], ctx.power_iters)
        sketch_omega = ctx.inputs[contract.probe_sketch_omega(self.group)]
        sketch = torch.matmul(rows.transpose(0, 1), torch.matmul(rows, sketch_omega))
        act = flat.index_select(0, ctx.inputs[contract.probe_act_rows(self.group)])
        ctx.outputs[contract.probe_basis(self.group)] = basis
        ctx.outputs[contract.probe_gram(self.group)] = gram
        ctx.outputs[contract.probe_sketch(self.group)] = sketch
        ctx.outputs[contract.probe_act(self.group)] = act
