"""Plain-PyTorch twins of every kernel (same signatures as the Triton versions).

They are the CPU path, the fallback where Triton is missing, and the reference the Triton
kernels are tested against. Accumulation is float32 whatever the storage dtype.

Sparse layout: ``rows`` int64 [nnz] (table rows), ``offsets`` int64 [N+1] CSR with N = B*S
sample-major rows (row r = b*S + s); mean divides by the row's length, an empty row gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from terarec.kernels import _common as C


def _segment_ids(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    n = offsets.numel() - 1
    return torch.repeat_interleave(torch.arange(n, device=offsets.device), C.lengths_of(offsets),
                                   output_size=nnz)


def _pool_sum(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    n = offsets.numel() - 1
    if weight.dtype == torch.float32:
        return F.embedding_bag(rows, weight, offsets, mode="sum", include_last_offset=True)
    vecs = weight.index_select(0, rows).float()
    out = torch.zeros(n, weight.shape[1], dtype=torch.float32, device=weight.device)
    return out.index_add_(0, _segment_ids(offsets, rows.numel()), vecs)


def pooled_lookup(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, mean: bool,
                  out_dtype: torch.dtype | None = None, hotness: int | None = None,
                  out: torch.Tensor | None = None,
                  out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``weight[rows]`` per CSR row: ``[N, D]`` (sum or mean; empty rows give zeros).

    ``hotness`` (rows per CSR row when fixed) is a hint for the Triton version; ignored here.
    ``out`` (``[M, D]``, its dtype wins over ``out_dtype``): CSR row ``q`` is written to
    ``out[out_rows[q]]`` (``out_rows`` int64 ``[N]``, distinct rows; None: ``out[q]``, M >= N),
    the other rows of ``out`` are left as they are, and ``out`` is returned.
    """
    C.check_csr(rows, offsets)
    C.check_lookup_out(out, out_rows, offsets.numel() - 1, weight.shape[1])
    pooled = _pool_sum(weight, rows, offsets)
    if mean:
        pooled = pooled / C.lengths_of(offsets).clamp(min=1).to(pooled.dtype).unsqueeze(1)
    if out is None:
        return pooled.to(out_dtype or weight.dtype)
    if out_rows is None:
        out[: pooled.shape[0]] = pooled.to(out.dtype)
    else:
        out.index_copy_(0, out_rows, pooled.to(out.dtype))
    return out


def pooled_lookup_multi(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                        table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                        slots: int = 1, out_dtype: torch.dtype | None = None,
                        hotness: int | None = None) -> torch.Tensor:
    """All tables of a model in one call: ``[B, T*slots, D]``.

    Args:
        weight: the T tables concatenated along rows, ``[sum R_t, D]``.
        rows: table-local rows of every lookup, table after table ``[nnz]``.
        offsets: table-major CSR ``[T*B*slots + 1]``: CSR row ``t*B*slots + b*slots + s``.
        table_offsets: int64 ``[T]``, first row of each table inside ``weight``.
        mean: one combiner for all tables or one flag per table.
        slots: slots per sample of every table.
        out_dtype: output dtype (default: ``weight.dtype``).
        hotness: hint for the Triton version (ignored here).

    Returns:
        ``out[b, t*slots + s]`` = pooled vector of table t, sample b, slot s (sample-major,
        ready for the DLRM interaction).
    """
    C.check_csr(rows, offsets)
    t = table_offsets.numel()
    n_rows = offsets.numel() - 1
    if t == 0 or n_rows % (t * slots):
        raise ValueError(f"offsets: expected T*B*slots+1 entries (T={t}, slots={slots}). "
                         f"Received: {offsets.numel()}")
    b = n_rows // (t * slots)
    base = table_offsets.to(rows.device).repeat_interleave(b * slots)
    grows = rows + base.repeat_interleave(C.lengths_of(offsets), output_size=rows.numel())
    out = _pool_sum(weight, grows, offsets)
    flags = C.mean_flags(mean, t, weight.device).repeat_interleave(b * slots).bool()
    div = torch.where(flags, C.lengths_of(offsets).clamp(min=1), 1).to(out.dtype)
    out = out / div.unsqueeze(1)
    out = out.view(t, b, slots, -1).permute(1, 0, 2, 3).reshape(b, t * slots, -1)
    return out.to(out_dtype or weight.dtype)


def _grad_table_major(g: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                      qscale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    g = g.float()
    if qscale is not None:
        g = g * qscale.unsqueeze(1)
    per_key = g.index_select(0, _segment_ids(offsets, rows.numel()))
    uniq, inverse = torch.unique(rows, return_inverse=True)
    out = torch.zeros(uniq.numel(), g.shape[1], dtype=torch.float32, device=g.device)
    out.index_put_((inverse,), per_key, accumulate=True)  # sort-based, deterministic on CUDA
    return uniq, out


def _scale(offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
           tables: int) -> torch.Tensor | None:
    if isinstance(mean, bool) and not mean:
        return None
    n = offsets.numel() - 1
    flags = C.mean_flags(mean, tables, offsets.device).repeat_interleave(n // tables).bool()
    inv = 1.0 / C.lengths_of(offsets).clamp(min=1).to(torch.float32)
    return torch.where(flags, inv, 1.0)


def sparse_grad(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unique row: ``(unique_rows [U] sorted, grad [U, D] float32)``; deterministic."""
    C.check_csr(rows, offsets)
    return _grad_table_major(grad_out, rows, offsets, _scale(offsets, mean, 1))


def row_sums(grad: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor | None = None,
             num_rows: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per distinct row of ``rows`` (one gradient row ``grad[i]`` per entry, or
    ``grad[grad_rows[i]]`` of a ``[M, D]`` gradient), without needing their number on the
    host: ``(rows_out [n], sums [n, D] float32, count [1] int64)``; the first ``count`` entries
    are the distinct rows ascending and the sums of their gradients (deterministic), the rest
    unspecified. ``num_rows``: an upper bound of the rows (a hint: below 2**31 the Triton
    version sorts them as int32)."""
    n = rows.numel()
    C.check_csr(rows, torch.zeros(1, dtype=torch.int64))
    grad = grad.reshape(-1, grad.shape[-1])
    if grad_rows is not None:
        C.check_grad_rows(grad_rows, n)
        grad = grad.index_select(0, grad_rows)
    offsets = torch.arange(n + 1, dtype=torch.int64, device=rows.device)
    uniq, summed = _grad_table_major(grad.reshape(n, grad.shape[-1]), rows, offsets, None)
    out_rows = torch.zeros(n, dtype=torch.int64, device=rows.device)
    out_rows[: uniq.numel()] = uniq
    sums = torch.zeros(n, grad.shape[-1], dtype=torch.float32, device=grad.device)
    sums[: uniq.numel()] = summed
    return out_rows, sums, torch.tensor([uniq.numel()], dtype=torch.int64, device=rows.device)


def _multi_to_table_major(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                          table_offsets: torch.Tensor,
                          slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = table_offsets.numel()
    b = grad_out.shape[0]
    dim = grad_out.shape[-1]
    g = grad_out.reshape(b, t, slots, dim).permute(1, 0, 2, 3).reshape(-1, dim)
    base = table_offsets.to(rows.device).repeat_interleave(b * slots)
    grows = rows + base.repeat_interleave(C.lengths_of(offsets), output_size=rows.numel())
    return g, grows


def sparse_grad_multi(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                      table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                      slots: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`pooled_lookup_multi`: ``(unique global rows, grad [U, D])``.

    ``grad_out`` is ``[B, T*slots, D]``; the rows returned index the concatenated ``weight``.
    """
    C.check_csr(rows, offsets)
    g, grows = _multi_to_table_major(grad_out, rows, offsets, table_offsets, slots)
    return _grad_table_major(g, grows, offsets, _scale(offsets, mean, table_offsets.numel()))


def stochastic_round_to_bf16(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Round float32 ``x`` to bfloat16 up or down with probability given by the distance."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(C.random_seed() if seed is None else seed)
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 65536, bits.shape, dtype=torch.int32, device=x.device,
                          generator=gen)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _store(weight: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, sr: bool,
           seed: int | None) -> None:
    if weight.dtype == torch.bfloat16 and sr:
        w = stochastic_round_to_bf16(w, seed)
    weight.index_copy_(0, rows, w.to(weight.dtype))


def _apply_rule(code: int, weight: torch.Tensor, states: Sequence[torch.Tensor],
                rows: torch.Tensor, grad: torch.Tensor, lr: float, h1: float, h2: float,
                h3: float, sr: bool, seed: int | None) -> None:
    """One rule of hugectr_reference.md §5.2 on the (unique) ``rows``, float32 math."""
    C.check_update(weight, rows, grad)
    C.check_states(code, states, weight)
    w = weight.index_select(0, rows).float()
    g = grad.float()
    st = [s.index_select(0, rows) for s in states]
    if code == C.SGD:
        w = w - lr * g
    elif code == C.MOMENTUM:
        st[0] = h1 * st[0] - lr * g
        w = w + st[0]
    elif code == C.NESTEROV:
        a_new = h1 * st[0] - lr * g
        w = w - h1 * st[0] + (1.0 + h1) * a_new
        st[0] = a_new
    elif code == C.ADAGRAD:
        st[0] = st[0] + g * g
        w = w - lr * g / (h1 + st[0].sqrt())
    elif code == C.ADAM:
        st[0] = h1 * st[0] + (1.0 - h1) * g
        st[1] = h2 * st[1] + (1.0 - h2) * g * g
        w = w - lr * st[0] / (st[1].sqrt() + h3)
    elif code == C.FTRL:
        n_new = st[0] + g * g
        st[1] = st[1] + g + (st[0].sqrt() - n_new.sqrt()) * w / lr
        st[0] = n_new
        z = st[1]
        shrunk = (h1 * torch.sign(z) - z) / (n_new.sqrt() / lr + h2)
        w = torch.where(z.abs() > h1, shrunk, torch.zeros_like(shrunk))
    for s, new in zip(states, st):
        s.index_copy_(0, rows, new)
    _store(weight, rows, w, sr, seed)


def sgd_update(weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float, *,
               stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """``w -= lr*g`` on unique ``rows`` (in place)."""
    _apply_rule(C.SGD, weight, [], rows, grad, lr, 0.0, 0.0, 0.0, stochastic_rounding, seed)


def momentum_update(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor, lr: float, momentum_factor: float, *,
                    stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """``m = f*m - lr*g; w += m`` on unique ``rows`` (in place)."""
    _apply_rule(C.MOMENTUM, weight, [momentum], rows, grad, lr, momentum_factor, 0.0, 0.0,
                stochastic_rounding, seed)


def nesterov_update(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor, lr: float, mu: float, *,
                    stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """``a' = mu*a - lr*g; w += -mu*a + (1+mu)*a'`` on unique ``rows`` (in place)."""
    _apply_rule(C.NESTEROV, weight, [accum], rows, grad, lr, mu, 0.0, 0.0,
                stochastic_rounding, seed)


def adagrad_update(weight: torch.Tensor, accum: torch.Tensor, rows: torch.Tensor,
                   grad: torch.Tensor, lr: float, eps: float, *,
                   stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """``s += g^2; w -= lr*g/(eps + sqrt(s))`` on unique ``rows`` (in place)."""
    _apply_rule(C.ADAGRAD, weight, [accum], rows, grad, lr, eps, 0.0, 0.0,
                stochastic_rounding, seed)


def adam_update(weight: torch.Tensor, m: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                grad: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float,
                step: int, *, stochastic_rounding: bool = False,
                seed: int | None = None) -> None:
    """HugeCTR Adam of step ``step`` (1-based) on unique ``rows`` (in place)."""
    alpha, h1, h2, h3 = C.rule_scalars(C.ADAM, lr, 0.0, beta1, beta2, eps, 0.0, 0.0, step)
    _apply_rule(C.ADAM, weight, [m, v], rows, grad, alpha, h1, h2, h3, stochastic_rounding, seed)


def ftrl_update(weight: torch.Tensor, n: torch.Tensor, z: torch.Tensor, rows: torch.Tensor,
                grad: torch.Tensor, lr: float, lambda1: float, lambda2: float, *,
                stochastic_rounding: bool = False, seed: int | None = None) -> None:
    """HugeCTR Ftrl (states n then z) on unique ``rows`` (in place)."""
    _apply_rule(C.FTRL, weight, [n, z], rows, grad, lr, lambda1, lambda2, 0.0,
                stochastic_rounding, seed)


def fused_backward_update(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                          mean: bool | Sequence[bool] | torch.Tensor, weight: torch.Tensor,
                          states: Sequence[torch.Tensor], optimizer: str, lr: float, *,
                          momentum_factor: float = 0.0, beta1: float = 0.9,
                          beta2: float = 0.999, epsilon: float = 1e-7, lambda1: float = 0.0,
                          lambda2: float = 0.0, step: int = 1, grad_scale: float = 1.0,
                          stochastic_rounding: bool = False, seed: int | None = None,
                          hotness: int | None = None, table_offsets: torch.Tensor | None = None,
                          slots: int = 1, return_unique: bool = True,
                          lr_factor: torch.Tensor | None = None) -> torch.Tensor | None:
    """Backward of :func:`pooled_lookup` (or, with ``table_offsets``, of
    :func:`pooled_lookup_multi`) plus the optimizer update, in place.

    ``grad_scale`` multiplies the aggregated gradient (``1/scaler``); ``states`` are the
    rule's states in HugeCTR order (shaped like ``weight``). Returns the sorted unique rows
    that were updated (global rows of ``weight``), or None with ``return_unique=False`` (the
    Triton twin then never waits for the device). ``lr_factor`` (a one-element tensor)
    multiplies ``lr``.
    """
    if lr_factor is not None:
        lr = lr * float(lr_factor.reshape(-1)[0])
    code = C.opt_code(optimizer)
    if table_offsets is None:
        uniq, g = sparse_grad(grad_out, rows, offsets, mean)  # type: ignore[arg-type]
    else:
        uniq, g = sparse_grad_multi(grad_out, rows, offsets, table_offsets, mean, slots)
    if grad_scale != 1.0:
        g = g * grad_scale
    lr_, h1, h2, h3 = C.rule_scalars(code, lr, momentum_factor, beta1, beta2, epsilon, lambda1,
                                     lambda2, step)
    _apply_rule(code, weight, states, uniq, g, lr_, h1, h2, h3, stochastic_rounding, seed)
    return uniq if return_unique else None


def mark_rows(used: torch.Tensor, rows: torch.Tensor) -> None:
    """Set ``used[rows] = True`` in place (``used``: bool ``[R]``, ``rows``: int64 in range)."""
    C.check_mark(used, rows)
    used.scatter_(0, rows, torch.ones_like(rows, dtype=torch.bool))


def relu_bias_backward(grad: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``y = relu(x @ w + b)`` up to the GEMMs: ``(g, db)`` with
    ``g = grad * (y > 0)`` and ``db = g.sum(0)`` (float32 sums, returned in ``grad``'s dtype)."""
    C.check_relu_bias(grad, y)
    g = torch.ops.aten.threshold_backward(grad, y, 0)
    return g, g.sum(0, dtype=torch.float32).to(grad.dtype)


def linear_relu_dgrad(grad: torch.Tensor, weight: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient reaching the ReLU layer below a linear layer: ``relu_bias_backward(grad @
    weight.T, y)`` with ``grad`` [M, N] (the upper layer's pre-activation gradient),
    ``weight`` [K, N] (its (in, out) weight) and ``y`` [M, K] (the lower layer's ReLU output,
    the upper layer's input)."""
    C.check_dgrad(grad, weight, y)
    return relu_bias_backward(grad.mm(weight.t()), y)


def interaction_forward(dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """DLRM dot interaction: ``[dense, strict lower triangle of X X^T (row-major), 0]``.

    X = [dense; emb] is ``[B, n, E]`` with n = S+1; output ``[B, E + n(n-1)/2 + 1]``.
    """
    b, e = dense.shape
    n = emb.shape[1] + 1
    x = torch.cat([dense.unsqueeze(1), emb], dim=1)
    z = torch.bmm(x, x.transpose(1, 2))
    li, lj = torch.tril_indices(n, n, -1, device=dense.device)
    return torch.cat([dense, z[:, li, lj], dense.new_zeros(b, 1)], dim=1)


def interaction_backward(grad_out: torch.Tensor, dense: torch.Tensor,
                         emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(d_dense [B, E], d_emb [B, S, E])`` of :func:`interaction_forward`."""
    b, e = dense.shape
    n = emb.shape[1] + 1
    x = torch.cat([dense.unsqueeze(1), emb], dim=1)
    li, lj = torch.tril_indices(n, n, -1, device=dense.device)
    sym = torch.zeros(b, n, n, dtype=x.dtype, device=x.device)
    sym[:, li, lj] = grad_out[:, e:e + li.numel()].to(x.dtype)
    dx = torch.bmm(sym + sym.transpose(1, 2), x)
    d_dense = (grad_out[:, :e].float() + dx[:, 0].float()).to(dense.dtype)
    return d_dense, dx[:, 1:].to(emb.dtype)


def _check_cross(x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                 others: Sequence[torch.Tensor | None] = ()) -> None:
    ts = [x0, u, *[t for t in others if t is not None]]
    if x0.dim() != 2 or any(t.shape != x0.shape or t.dtype != x0.dtype
                            or t.device != x0.device for t in ts):
        raise ValueError("cross: expected [B, N] tensors of one shape, dtype and device. "
                         f"Received: {[(tuple(t.shape), t.dtype, str(t.device)) for t in ts]}")
    if b.numel() != x0.shape[1] or b.device != x0.device:
        raise ValueError(f"cross: expected a bias of {x0.shape[1]} elements on {x0.device}. "
                         f"Received: {tuple(b.shape)} on {b.device}")


def cross_forward(x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """DCN cross update ``y = x0 * (u + b) + x`` (``[B, N]``, ``b`` ``[N]`` or ``[1, N]``),
    float32 math, returned in ``x0``'s dtype."""
    _check_cross(x0, u, b, (x,))
    y = x0.float() * (u.float() + b.float().reshape(1, -1)) + x.float()
    return y.to(x0.dtype)


def cross_backward(grad: torch.Tensor, x0: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                   dx0: torch.Tensor | None = None, add_grad: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`cross_forward` up to the GEMMs: ``(du, dx0, db)`` with
    ``du = grad * x0``, ``dx0 = [dx0 +] grad * (u + b) [+ grad]`` and ``db = du.sum(0)``
    (float32 math, returned in ``x0``'s dtype; ``db`` is ``[N]``).

    ``dx0`` (the running gradient of ``x0`` from the layers above) is updated in place and
    returned; ``add_grad`` adds ``grad`` itself (the residual gradient when ``x`` is ``x0``).
    ``x``'s residual gradient is ``grad`` (not returned).
    """
    _check_cross(x0, u, b, (grad, dx0))
    g = grad.float()
    du = g * x0.float()
    dx = g * (u.float() + b.float().reshape(1, -1))
    if dx0 is not None:
        dx = dx0.float() + dx
    if add_grad:
        dx = dx + g
    if dx0 is None:
        dx0 = dx.to(x0.dtype)
    else:
        dx0.copy_(dx)
    return du.to(x0.dtype), dx0, du.sum(0).to(x0.dtype)
