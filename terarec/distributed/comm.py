"""Collective helpers over ``torch.distributed`` with variable-size payloads.

Owns the few communication patterns the sharded embeddings need: an all-to-all of per-peer
counts, an all-to-all of rows with uneven splits, point-to-point blocks in one batch
(:func:`exchange_blocks`: each block lands where its receiver wants it), an all-gather of
uneven tensors and a gather of uneven tensors to one rank (point to point, so rank 0 alone
holds the result). Every helper works on gloo (CPU) and NCCL (CUDA) alike; the tensors must
live on the process group's device.

:func:`all_to_all_rows_async` issues the rows all-to-all without waiting (``async_op=True``:
gloo runs it on its own threads, NCCL on its communication stream); its :class:`PendingRows`
holds both buffers until :meth:`PendingRows.wait` (gloo: blocks until done; NCCL: the current
stream waits for the collective, no host synchronisation).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def world_size(group: Group = None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group: Group = None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def all_to_all_counts(send: torch.Tensor, group: Group = None) -> torch.Tensor:
    """``send[j]`` (one row per peer, any trailing shape) goes to rank ``j``; returns what
    every peer sent to this rank, row ``i`` from rank ``i``."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send.contiguous(), group=group)
    return recv


def all_to_all_rows(send: torch.Tensor, send_counts: list[int], recv_counts: list[int],
                    group: Group = None) -> torch.Tensor:
    """Rows ``send[sum(send_counts[:j]) : ...]`` go to rank ``j``; returns the received rows
    concatenated in source-rank order (``recv_counts[i]`` rows from rank ``i``)."""
    out = send.new_empty((int(sum(recv_counts)), *send.shape[1:]))
    dist.all_to_all_single(out, send.contiguous(), output_split_sizes=list(recv_counts),
                           input_split_sizes=list(send_counts), group=group)
    return out


class PendingRows:
    """An :func:`all_to_all_rows` in flight; :meth:`wait` returns its received rows."""

    def __init__(self, out: torch.Tensor, send: torch.Tensor, work: object | None) -> None:
        self.out = out
        self.send: torch.Tensor | None = send  # kept alive until the collective is done
        self.work = work

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()  # type: ignore[attr-defined]
            self.work = None
        self.send = None
        return self.out


def all_to_all_rows_async(send: torch.Tensor, send_counts: list[int], recv_counts: list[int],
                          group: Group = None) -> PendingRows:
    """:func:`all_to_all_rows` issued without waiting (same messages, same result)."""
    out = send.new_empty((int(sum(recv_counts)), *send.shape[1:]))
    send = send.contiguous()
    work = dist.all_to_all_single(out, send, output_split_sizes=list(recv_counts),
                                  input_split_sizes=list(send_counts), group=group,
                                  async_op=True)
    return PendingRows(out, send, work)


def exchange_blocks(sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, torch.Tensor]],
                    group: Group = None) -> None:
    """Point-to-point blocks in one batch (``batch_isend_irecv``: one NCCL group): each
    ``(peer, tensor)`` of ``sends`` goes to group rank ``peer``, each ``(peer, out)`` of
    ``recvs`` is filled from ``peer``; between two ranks the i-th block one sends is the i-th
    the other receives (same shape, both sides skip empty blocks). Blocks from this rank to
    itself are copied. Returns when the blocks can be read (NCCL: the current stream waits,
    no host synchronisation)."""
    me = rank(group)
    own_out = [t for p, t in recvs if p == me and t.numel()]
    own_in = [t for p, t in sends if p == me and t.numel()]
    if len(own_out) != len(own_in):
        raise ValueError(f"exchange_blocks: {len(own_in)} blocks to self, {len(own_out)} from")
    for out, src in zip(own_out, own_in):
        if out.data_ptr() != src.data_ptr():
            out.copy_(src)
    ops = [dist.P2POp(dist.isend, t.contiguous(), _global(p, group), group)
           for p, t in sends if p != me and t.numel()]
    ops += [dist.P2POp(dist.irecv, t, _global(p, group), group)
            for p, t in recvs if p != me and t.numel()]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def all_gather_sizes(n: int, device: torch.device, group: Group = None) -> list[int]:
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


def all_gather_rows(t: torch.Tensor, sizes: list[int] | None = None,
                    group: Group = None) -> tuple[torch.Tensor, list[int]]:
    """Concatenate every rank's ``t`` (uneven first dimension) in rank order, on every rank."""
    if sizes is None:
        sizes = all_gather_sizes(t.shape[0], t.device, group)
    top = max(sizes) if sizes else 0
    padded = t.new_zeros((top, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sizes


def gather_rows(t: torch.Tensor, dst: int = 0, group: Group = None) -> torch.Tensor | None:
    """Concatenate every rank's ``t`` in rank order on ``dst`` only (None elsewhere).

    Point-to-point sends, so only ``dst`` ever holds the whole result.
    """
    sizes = all_gather_sizes(t.shape[0], t.device, group)
    me = rank(group)
    if me != dst:
        if t.shape[0]:
            dist.send(t.contiguous(), dst=_global(dst, group), group=group)
        return None
    parts = []
    for src, n in enumerate(sizes):
        if src == me:
            parts.append(t)
        elif n:
            buf = t.new_empty((n, *t.shape[1:]))
            dist.recv(buf, src=_global(src, group), group=group)
            parts.append(buf)
    return torch.cat(parts) if parts else t[:0]


def _global(group_rank: int, group: Group) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def all_reduce_sum_(tensors: list[torch.Tensor], group: Group = None) -> None:
    """Sum ``tensors`` over ranks in place with one flat all-reduce."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    pos = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[pos:pos + n].view_as(t))
        pos += n


def barrier(group: Group = None) -> None:
    if world_size(group) > 1:
        dist.barrier(group=group)
