"""Tests for the routed expert layers: adamix_ds.experts / adamix_ds.layers.

Oracle: the paper's equations written out as plain Python loops over tokens and features in
float64 (nested lists, no torch arithmetic), indexing the raw stacked tensors explicitly:

    LoRA     (Hu et al.; AdaMix Eq. 1-2):  h = W0 x + b0 + (alpha / r) * B_k A_j x
             library layout ``x @ W``: A (M_down, d_in, r), B (M_up, r, d_out), so
             (A_j x)[t] = sum_i x[i] * A[j][i][t]  and  (B_k u)[o] = sum_t u[t] * B[k][t][o]
    Houlsby  y = h + W_up_k act(W_down_j h + b_down_j) + b_up_k,   h = base projection output
    Eq. 3    merged module = mean over experts of every stacked tensor, then the formula above.

The route (j, k) of a training forward is read from the Router (its hash is tested elsewhere);
each test also checks that the routes it exercised actually vary, so a layer that ignored the
route would fail. Modules are float64 so the tolerances are ~1e-10.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode
from transformers.pytorch_utils import Conv1D

from adamix_ds.layers import AdaMixAdapter, AdaMixLoRA
from adamix_ds.routing import Router

D_IN, D_OUT, H = 12, 9, 8          # H = one third of GPT-2's fused c_attn output (3 * H)
R, ALPHA = 3, 6.0                  # LoRA scale = alpha / r = 2
BOTTLENECK = 3
BATCH, SEQ = 2, 5
M = 4
STEPS = 6
SHARES = ("up", "down", "none")
ACTS = ("relu", "gelu", "gelu_tanh")
TOL = dict(rtol=1e-10, atol=1e-10)

Nested = list  # nested python lists of floats


# ----------------------------------------------------------------------------------------------
# Builders (library objects with random, non-trivial float64 parameters)
# ----------------------------------------------------------------------------------------------
def _base(kind: str, gen: torch.Generator) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """A base projection with random weight and bias, and the output slices LoRA adapts."""
    if kind == "linear":
        base, slices = nn.Linear(D_IN, D_OUT), {"all": (0, D_OUT)}
    elif kind == "conv1d":
        base, slices = Conv1D(D_OUT, D_IN), {"all": (0, D_OUT)}
    elif kind == "fused":  # GPT-2 c_attn: Q | K | V, only Q and V adapted
        base, slices = Conv1D(3 * H, D_IN), {"q": (0, H), "v": (2 * H, 3 * H)}
    else:
        raise ValueError(kind)
    base = base.double()
    with torch.no_grad():
        base.weight.copy_(torch.randn(base.weight.shape, generator=gen, dtype=torch.float64) * 0.3)
        base.bias.copy_(torch.randn(base.bias.shape, generator=gen, dtype=torch.float64))
    return base, slices


def make_lora(kind: str, share: str, num_experts: int = M, seed: int = 0):
    gen = torch.Generator().manual_seed(1234 + seed)
    base, slices = _base(kind, gen)
    router = Router(seed=seed)
    layer = AdaMixLoRA(base, slices, rank=R, num_experts=num_experts, share=share, alpha=ALPHA,
                       dropout=0.0, router=router, name="blk").double()
    with torch.no_grad():  # B is zero-initialised: give every expert distinct non-zero values
        for experts in layer.experts.values():
            experts.lora_a.copy_(torch.randn(experts.lora_a.shape, generator=gen,
                                             dtype=torch.float64))
            experts.lora_b.copy_(torch.randn(experts.lora_b.shape, generator=gen,
                                             dtype=torch.float64))
    return layer, router, slices


def make_adapter(kind: str, share: str, act: str, num_experts: int = M, seed: int = 0):
    gen = torch.Generator().manual_seed(4321 + seed)
    base, _ = _base(kind, gen)
    router = Router(seed=seed)
    layer = AdaMixAdapter(base, bottleneck=BOTTLENECK, num_experts=num_experts, share=share,
                          activation=act, router=router, name="blk").double()
    e = layer.experts["adapter"]
    with torch.no_grad():  # Houlsby init is ~1e-3: use O(1) values so the nonlinearity matters
        for p in (e.down_weight, e.down_bias, e.up_weight, e.up_bias):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.6)
    return layer, router


def rand_x(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    gen = torch.Generator().manual_seed(99 + seed)
    return torch.randn(batch, SEQ, D_IN, generator=gen, dtype=torch.float64)


def expected_sides(share: str, num_experts: int = M) -> tuple[int, int]:
    """(M_down, M_up) as the paper defines sharing: the shared side is one module."""
    return (1 if share == "down" else num_experts, 1 if share == "up" else num_experts)


# ----------------------------------------------------------------------------------------------
# Reference: plain Python loops in float64
# ----------------------------------------------------------------------------------------------
def L(t: torch.Tensor) -> Nested:
    return t.detach().to(torch.float64).tolist()


def tokens(x: torch.Tensor) -> Nested:
    return L(x.reshape(-1, x.shape[-1]))


def ref_mean(stack: Nested):
    """Element-wise mean over the leading (expert) axis of a nested list."""
    if isinstance(stack[0], list):
        return [ref_mean([s[i] for s in stack]) for i in range(len(stack[0]))]
    return sum(stack) / len(stack)


def ref_projection(kind: str, base: nn.Module, xs: Nested) -> Nested:
    """Frozen base: nn.Linear weight is (out, in); GPT-2 Conv1D weight is (in, out)."""
    W, b = L(base.weight), L(base.bias)
    out = []
    for x in xs:
        if kind == "linear":
            out.append([b[o] + sum(x[i] * W[o][i] for i in range(len(x))) for o in range(len(W))])
        else:
            out.append([b[o] + sum(x[i] * W[i][o] for i in range(len(x)))
                        for o in range(len(W[0]))])
    return out


def ref_lora_update(x: list[float], A: Nested, B: Nested, scale: float) -> list[float]:
    """scale * B A x with A: (d_in, r) and B: (r, d_slice) raw ``x @ W`` layout."""
    d_in, r, d_slice = len(A), len(B), len(B[0])
    u = [sum(x[i] * A[i][t] for i in range(d_in)) for t in range(r)]
    return [scale * sum(u[t] * B[t][o] for t in range(r)) for o in range(d_slice)]


def ref_lora_out(kind, base, slices, picks: dict[str, tuple[Nested, Nested]], xs) -> Nested:
    """h = W0 x + b0, plus (alpha/r) B A x added on each adapted slice."""
    out = ref_projection(kind, base, xs)
    for name, (start, stop) in slices.items():
        A, B = picks[name]
        for n, x in enumerate(xs):
            delta = ref_lora_update(x, A, B, ALPHA / R)
            for o in range(stop - start):
                out[n][start + o] += delta[o]
    return out


def ref_act(name: str, z: float) -> float:
    if name == "relu":
        return z if z > 0 else 0.0
    if name == "gelu":
        return 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * z * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))
    raise ValueError(name)


def ref_adapter(hs: Nested, Wd: Nested, bd: list[float], Wu: Nested, bu: list[float],
                act: str) -> Nested:
    """y = h + W_up act(W_down h + b_down) + b_up, with W_down (d, b), W_up (b, d) raw layout."""
    d, b = len(Wd), len(bd)
    out = []
    for h in hs:
        z = [bd[c] + sum(h[o] * Wd[o][c] for o in range(d)) for c in range(b)]
        a = [ref_act(act, v) for v in z]
        out.append([h[o] + bu[o] + sum(a[c] * Wu[c][o] for c in range(b)) for o in range(d)])
    return out


def as_tensor(ref: Nested, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(ref, dtype=torch.float64).reshape(like.shape)


def lora_tables(layer: AdaMixLoRA) -> dict[str, tuple[Nested, Nested]]:
    """slice -> (A as [M_down][d_in][r], B as [M_up][r][d_slice]) nested lists."""
    return {n: (L(e.lora_a), L(e.lora_b)) for n, e in layer.experts.items()}


def adapter_table(layer: AdaMixAdapter) -> tuple[Nested, ...]:
    e = layer.experts["adapter"]
    return L(e.down_weight), L(e.down_bias), L(e.up_weight), L(e.up_bias)


def train_route(router: Router, key: int) -> tuple[tuple[int, int], ...]:
    return tuple(router.route(key, training=True))


# ----------------------------------------------------------------------------------------------
# 1. LoRA experts vs the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("kind", ["linear", "conv1d", "fused"])
def test_lora_training_matches_reference(kind, share):
    """Training forward = W0 x + b0 + (alpha/r) B_k A_j x with (j, k) the router's route, on
    nn.Linear / Conv1D / fused c_attn (K third bit-exactly the base); over several router steps
    that draw several different experts, with the shared side stored as a single module."""
    layer, router, slices = make_lora(kind, share)
    layer.train()
    m_down, m_up = expected_sides(share)
    for e in layer.experts.values():
        assert tuple(e.lora_a.shape) == (m_down, D_IN, R)
        assert tuple(e.lora_b.shape[:2]) == (m_up, R)
    tables = lora_tables(layer)
    seen_down, seen_up = set(), set()
    for step in range(STEPS):
        x = rand_x(step)
        out = layer(x)
        picks = {}
        for name in slices:
            ((j, k),) = train_route(router, layer.keys[name])
            assert 0 <= j < m_down and 0 <= k < m_up
            seen_down.add(j)
            seen_up.add(k)
            A, B = tables[name]
            picks[name] = (A[j], B[k])
        ref = as_tensor(ref_lora_out(kind, layer.base, slices, picks, tokens(x)), out)
        torch.testing.assert_close(out, ref, **TOL)
        if kind == "fused":
            assert torch.equal(out[..., H:2 * H], layer.base(x)[..., H:2 * H])
        router.advance()
    # the routes exercised really vary on every non-shared side (else the test proves little)
    assert (len(seen_down) > 1) == (m_down > 1)
    assert (len(seen_up) > 1) == (m_up > 1)


@pytest.mark.parametrize("policy", ["merged", "fixed"])
@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("kind", ["linear", "conv1d", "fused"])
def test_lora_eval_matches_reference(kind, share, policy):
    """Eval: `merged` = Eq. 3 (mean of A's, mean of B's, then the LoRA formula); `fixed` = expert
    0 on both sides. Also shows the two policies (and a routed expert) give different outputs."""
    layer, router, slices = make_lora(kind, share)
    layer.eval()
    tables = lora_tables(layer)
    x = rand_x(7)
    if policy == "merged":
        picks = {n: (ref_mean(A), ref_mean(B)) for n, (A, B) in tables.items()}
    else:
        picks = {n: (A[0], B[0]) for n, (A, B) in tables.items()}
    with torch.no_grad(), router.use_inference(policy):
        out = layer(x)
    ref = as_tensor(ref_lora_out(kind, layer.base, slices, picks, tokens(x)), out)
    torch.testing.assert_close(out, ref, **TOL)
    if kind == "fused":
        assert torch.equal(out[..., H:2 * H], layer.base(x)[..., H:2 * H])
    # discriminating: the other single-expert choice gives a different answer
    other = {n: (A[-1], B[-1]) if policy == "merged" else (ref_mean(A), ref_mean(B))
             for n, (A, B) in tables.items()}
    alt = as_tensor(ref_lora_out(kind, layer.base, slices, other, tokens(x)), out)
    assert (out - alt).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# 2. Houlsby adapter experts vs the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_adapter_training_matches_reference(kind, share, act):
    """Training forward = h + W_up_k act(W_down_j h + b_down_j) + b_up_k for the routed (j, k),
    over several steps, for every share mode and activation."""
    layer, router = make_adapter(kind, share, act)
    layer.train()
    m_down, m_up = expected_sides(share)
    Wd, bd, Wu, bu = adapter_table(layer)
    assert (len(Wd), len(bd), len(Wu), len(bu)) == (m_down, m_down, m_up, m_up)
    seen = set()
    for step in range(STEPS):
        x = rand_x(step)
        out = layer(x)
        ((j, k),) = train_route(router, layer.keys["adapter"])
        seen.add((j, k))
        hs = ref_projection(kind, layer.base, tokens(x))
        ref = as_tensor(ref_adapter(hs, Wd[j], bd[j], Wu[k], bu[k], act), out)
        torch.testing.assert_close(out, ref, **TOL)
        router.advance()
    assert len(seen) > 1


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("share", SHARES)
def test_adapter_merged_is_weight_average_through_nonlinearity(share, act):
    """Eval `merged` = Eq. 3: the adapter formula with the *averaged weights and biases*, i.e.
    act(mean W_down h + mean b_down) -- not the average of the experts' outputs. The two differ
    whenever the down side has several experts; with a shared down side the adapter is linear in
    the up side and they must coincide (sanity check of the oracle)."""
    layer, router = make_adapter("linear", share, act)
    layer.eval()
    Wd, bd, Wu, bu = adapter_table(layer)
    x = rand_x(3)
    with torch.no_grad(), router.use_inference("merged"):
        out = layer(x)
    hs = ref_projection("linear", layer.base, tokens(x))
    ref = as_tensor(ref_adapter(hs, ref_mean(Wd), ref_mean(bd), ref_mean(Wu), ref_mean(bu), act),
                    out)
    torch.testing.assert_close(out, ref, **TOL)

    per_pair = [ref_adapter(hs, Wd[j], bd[j], Wu[k], bu[k], act)
                for j in range(len(Wd)) for k in range(len(Wu))]
    output_average = as_tensor(ref_mean(per_pair), out)
    gap = (out - output_average).abs().max().item()
    if share == "down":
        assert gap < 1e-10
    else:
        assert gap > 1e-3


# ----------------------------------------------------------------------------------------------
# 3. Paired segments (the consistency pass over cat(x1, x2))
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("method", ["lora_fused", "adapter"])
def test_paired_route_equals_two_single_routes(method, share):
    """With ``router.use_passes(0, 1)`` a forward over cat(x1, x2) routes x1 with pass 0 and x2
    with pass 1: it equals forward(x1) (default pass 0) cat forward(x2) under use_passes(1), and
    the reference with the two routes; some step has different routes for the two passes."""
    if method == "lora_fused":
        layer, router, slices = make_lora("fused", share)
    else:
        layer, router = make_adapter("linear", share, "gelu")
    keys = dict(layer.keys)
    layer.train()
    differing = 0
    for step in range(STEPS):
        x1, x2 = rand_x(2 * step), rand_x(2 * step + 1)
        with router.use_passes(0, 1):
            paired = layer(torch.cat([x1, x2], dim=0))
            routes = {n: train_route(router, key) for n, key in keys.items()}
        single0 = layer(x1)
        with router.use_passes(1):
            single1 = layer(x2)
        # float64; not bit-equal: BLAS may block a (2B, ...) matmul differently from two (B, ...)
        torch.testing.assert_close(paired, torch.cat([single0, single1], dim=0), rtol=0,
                                   atol=1e-12)

        for seg, xs in enumerate((x1, x2)):
            if method == "lora_fused":
                tables = lora_tables(layer)
                picks = {n: (tables[n][0][routes[n][seg][0]], tables[n][1][routes[n][seg][1]])
                         for n in slices}
                ref = ref_lora_out("fused", layer.base, slices, picks, tokens(xs))
            else:
                Wd, bd, Wu, bu = adapter_table(layer)
                j, k = routes["adapter"][seg]
                ref = ref_adapter(ref_projection("linear", layer.base, tokens(xs)),
                                  Wd[j], bd[j], Wu[k], bu[k], "gelu")
            half = paired[seg * BATCH:(seg + 1) * BATCH]
            torch.testing.assert_close(half, as_tensor(ref, half), **TOL)
        differing += any(r[0] != r[1] for r in routes.values())
        router.advance()
    assert differing > 0


# ----------------------------------------------------------------------------------------------
# 4. FLOPs: a training forward costs one module, whatever M
# ----------------------------------------------------------------------------------------------
def _flops(layer: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        layer(x)
    return counter.get_total_flops()


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def _build_for_flops(method: str, share: str, num_experts: int):
    if method == "lora_linear":
        layer, router, _ = make_lora("linear", share, num_experts)
    elif method == "lora_fused":
        layer, router, _ = make_lora("fused", share, num_experts)
    else:
        layer, router = make_adapter("linear", share, "gelu", num_experts)
    return layer, router


def _hand_flops(method: str, n_tok: int) -> int:
    """base matmul + one expert's two matmuls per adapted slice (2*m*n*k each)."""
    if method == "lora_linear":
        return _mm(n_tok, D_IN, D_OUT) + _mm(n_tok, D_IN, R) + _mm(n_tok, R, D_OUT)
    if method == "lora_fused":
        return _mm(n_tok, D_IN, 3 * H) + 2 * (_mm(n_tok, D_IN, R) + _mm(n_tok, R, H))
    return (_mm(n_tok, D_IN, D_OUT) + _mm(n_tok, D_OUT, BOTTLENECK)
            + _mm(n_tok, BOTTLENECK, D_OUT))


@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("method", ["lora_linear", "lora_fused", "adapter"])
def test_training_flops_do_not_scale_with_num_experts(method, share):
    """FlopCounterMode: a training forward with M=8 counts exactly the FLOPs of M=1, which equal
    the hand count (base matmul + one expert's matmuls); the paired pass over 2B rows costs
    twice."""
    n_tok = BATCH * SEQ
    x = rand_x(0)
    counts = {}
    for num_experts in (1, 8):
        layer, router = _build_for_flops(method, share, num_experts)
        layer.train()
        counts[num_experts] = _flops(layer, x)
        with router.use_passes(0, 1):
            assert _flops(layer, torch.cat([x, x])) == 2 * counts[num_experts]
    assert counts[8] == counts[1] == _hand_flops(method, n_tok)


@pytest.mark.parametrize("method", ["lora_linear", "lora_fused", "adapter"])
def test_merged_eval_flops_are_one_module(method):
    """Eval with the merged policy averages *weights*: the count is the single-module hand count
    (matmul FLOPs linear in tokens, no factor M), not M per-expert forwards averaged."""
    layer, router = _build_for_flops(method, "none", 8)
    layer.eval()
    with torch.no_grad(), router.use_inference("merged"):
        for batch in (BATCH, 2 * BATCH):
            assert _flops(layer, rand_x(0, batch)) == _hand_flops(method, batch * SEQ)


# ----------------------------------------------------------------------------------------------
# 5. Gradients reach only the routed experts
# ----------------------------------------------------------------------------------------------
def _grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


@pytest.mark.parametrize("passes", [(0,), (0, 1)])
@pytest.mark.parametrize("share", SHARES)
def test_lora_gradients_only_on_routed_experts(share, passes):
    """After backward of sum(g * out), the rows A[j] / B[k] of non-routed experts have exactly zero
    grad, and routed rows equal the hand-derived gradient:
    dA[j][i][t] = s * sum_n x[n][i] sum_o g[n][o] B[k][t][o],
    dB[k][t][o] = s * sum_n (A_j x_n)[t] g[n][o]."""
    layer, router, slices = make_lora("fused", share)
    layer.train()
    layer.base.requires_grad_(False)
    scale = ALPHA / R
    for step in (0, 3):
        router.step = step
        layer.zero_grad(set_to_none=True)
        x = torch.cat([rand_x(step + s) for s in range(len(passes))], dim=0)
        g = torch.randn(x.shape[0], SEQ, 3 * H, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(step))
        with router.use_passes(*passes):
            (layer(x) * g).sum().backward()
            routes = {n: train_route(router, layer.keys[n]) for n in slices}
        xt, gt = tokens(x), tokens(g)
        n_seg = len(xt) // len(passes)
        for name, (start, stop) in slices.items():
            e = layer.experts[name]
            A, B = L(e.lora_a), L(e.lora_b)
            dA = [[[0.0] * R for _ in range(D_IN)] for _ in A]
            dB = [[[0.0] * (stop - start) for _ in range(R)] for _ in B]
            for seg, (j, k) in enumerate(routes[name]):
                for n in range(seg * n_seg, (seg + 1) * n_seg):
                    x_n, g_n = xt[n], gt[n][start:stop]
                    u = [sum(x_n[i] * A[j][i][t] for i in range(D_IN)) for t in range(R)]
                    for t in range(R):
                        gb = sum(g_n[o] * B[k][t][o] for o in range(stop - start))
                        for i in range(D_IN):
                            dA[j][i][t] += scale * x_n[i] * gb
                        for o in range(stop - start):
                            dB[k][t][o] += scale * u[t] * g_n[o]
            routed_down = {j for j, _ in routes[name]}
            routed_up = {k for _, k in routes[name]}
            for param, ref, routed in ((e.lora_a, dA, routed_down), (e.lora_b, dB, routed_up)):
                grad = _grad(param)
                for idx in range(param.shape[0]):
                    if idx in routed:
                        assert grad[idx].abs().max() > 0
                        torch.testing.assert_close(grad[idx], torch.tensor(ref[idx],
                                                   dtype=torch.float64), **TOL)
                    else:
                        assert torch.count_nonzero(grad[idx]) == 0, (name, idx)


@pytest.mark.parametrize("share", SHARES)
def test_adapter_gradients_only_on_routed_experts(share):
    """Adapter: after backward, non-routed experts' W_down/b_down/W_up/b_up have zero grad and the
    routed ones a non-zero grad."""
    layer, router = make_adapter("linear", share, "gelu")
    layer.train()
    layer.base.requires_grad_(False)
    e = layer.experts["adapter"]
    for step in range(3):
        router.step = step
        layer.zero_grad(set_to_none=True)
        layer(rand_x(step)).pow(2).sum().backward()
        ((j, k),) = train_route(router, layer.keys["adapter"])
        for param, routed in ((e.down_weight, j), (e.down_bias, j), (e.up_weight, k),
                              (e.up_bias, k)):
            grad = _grad(param)
            for idx in range(param.shape[0]):
                nonzero = torch.count_nonzero(grad[idx]).item()
                assert (nonzero > 0) == (idx == routed), (step, idx, routed)


# ----------------------------------------------------------------------------------------------
# 6. Activation recomputation replays the route
# ----------------------------------------------------------------------------------------------
class TorchRNGRouter(Router):
    """A deliberately wrong router that draws training routes from torch's global RNG."""

    def route(self, key, training):
        if not training:
            return super().route(key, training)
        _, n_down, n_up = self._keys[key]
        return tuple((int(torch.randint(n_down, ())), int(torch.randint(n_up, ())))
                     for _ in self.passes)


def _fwd_bwd(layer, router, x, g, use_ckpt: bool, step: int):
    """Forward at ``step`` under one torch seed, reseed and draw in between, then backward."""
    router.step = step
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(step)
    out = (checkpoint(layer, x, use_reentrant=False, preserve_rng_state=False)
           if use_ckpt else layer(x))
    torch.manual_seed(10_000 + step)
    torch.rand(97)
    (out * g).sum().backward()
    grads = [x.grad.clone()] + [_grad(p).clone() for _, p in layer.adapter_params()]
    return out.detach(), grads


def _build_ckpt(method: str, router_cls=Router):
    if method == "lora_fused":
        layer, _, _ = make_lora("fused", "none")
    else:
        layer, _ = make_adapter("linear", "none", "gelu")
    # Rebind the layer to a fresh router of ``router_cls`` (same keys, same registration order).
    router = router_cls(seed=0)
    for name in layer.keys:
        e = layer.experts[name]
        layer.keys[name] = router.register(name, e.num_down, e.num_up)
    layer.router = router
    layer.train()
    layer.base.requires_grad_(False)
    return layer, router


def _ckpt_mismatches(layer, router) -> int:
    x = rand_x(5)
    g = torch.randn(layer(x).shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(5))
    mismatches = 0
    for step in range(4):
        out_p, grads_p = _fwd_bwd(layer, router, x, g, use_ckpt=False, step=step)
        out_c, grads_c = _fwd_bwd(layer, router, x, g, use_ckpt=True, step=step)
        assert torch.equal(out_p, out_c)
        mismatches += any(not torch.equal(a, b) for a, b in zip(grads_p, grads_c, strict=True))
    return mismatches


@pytest.mark.parametrize("method", ["lora_fused", "adapter"])
def test_checkpoint_recompute_replays_route(method):
    """checkpoint(layer, x, use_reentrant=False) -- without torch's RNG preservation, and with
    torch.manual_seed + RNG draws between forward and backward -- gives bit-identical outputs and
    gradients (input and experts) to the plain call at the same router step; the route itself is
    unaffected by torch's RNG."""
    layer, router = _build_ckpt(method)
    key = next(iter(layer.keys.values()))
    before = train_route(router, key)
    torch.manual_seed(77)
    torch.rand(13)
    assert train_route(router, key) == before
    assert _ckpt_mismatches(layer, router) == 0


def test_checkpoint_check_detects_torch_rng_routing():
    """Sensitivity of the test above: a router drawing routes from torch's RNG makes the
    recomputed forward take another route, so the gradients differ from the plain call."""
    layer, router = _build_ckpt("lora_fused", TorchRNGRouter)
    assert _ckpt_mismatches(layer, router) > 0
