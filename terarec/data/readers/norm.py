"""HugeCTR "Norm" binary reader (§15.2): 64-byte header, variable nnz per slot, optional checksums.

Decoding is vectorised with numpy. Fast path (every record has the same length, e.g. one-hot
Criteo): the record stride is taken from the first record and verified for all records at once
(file size, every length field, and -- in :meth:`NormSource._parse_matrix` -- every ``nnz`` field
against sample 0's layout); the file is then a ``(n, stride)`` matrix, checksums are one
``uint8`` row sum (wrapping mod 256 like the C ``char`` sum) and label/dense/keys are column slices.
General case: with ``Check_t.Sum`` every record is framed as
``int32 length + payload + 1 checksum byte`` (the header is a record too); record starts are found
by hopping lengths, payloads are gathered into one aligned word stream and checksums are verified
with one ``np.add.reduceat``. With ``Check_t.Non`` sample starts are found with a jump table: every
word position is read as a potential ``nnz`` field, the "next slot" map is composed ``slot_num``
times to a "next sample" map, and the chain is followed once per sample. Slots are then parsed for
all samples at once, slot by slot. Fixed-layout files (one-hot) take a shortcut.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from terarec.data.readers.base import FormatSource, check_files_exist, read_file_list
from terarec.data.readers.chunk import (
    Chunk,
    check_dense_finite,
    check_keys,
    fixed_lengths,
    split_slots,
)
from terarec.errors import DataError

HEADER_BYTES = 64
HEADER_FIELDS = ["error_check", "number_of_records", "label_dim", "dense_dim", "slot_num"]


def read_norm_header(path: str, check_type: str) -> tuple[np.ndarray, int]:
    """Validate framing + checksum of the header record; return (8 int64 fields, data offset)."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES + 5)
    if check_type == "Sum":
        if len(head) < HEADER_BYTES + 5:
            raise DataError(path, f"truncated header: file has {len(head)} bytes, a Check_t.Sum "
                            f"header record needs {HEADER_BYTES + 5}", offset=len(head))
        (ln,) = struct.unpack_from("<i", head, 0)
        if ln != HEADER_BYTES:
            hint = " (the file looks like Check_t.Non; set check_type='Non')" if ln == 0 else ""
            raise DataError(path, f"expected the Check_t.Sum header record length {HEADER_BYTES}, "
                            f"received {ln}{hint}", offset=0, field="record length")
        payload = np.frombuffer(head, np.uint8, HEADER_BYTES, 4)
        want, got = head[4 + HEADER_BYTES], int(payload.sum()) & 0xFF
        if want != got:
            raise DataError(path, f"header checksum mismatch: stored {want}, computed {got}",
                            offset=4 + HEADER_BYTES, field="checksum")
        return np.frombuffer(head, "<i8", 8, 4).copy(), HEADER_BYTES + 5
    if len(head) < HEADER_BYTES:
        raise DataError(path, f"truncated header: file has {len(head)} bytes, the Norm header "
                        f"needs {HEADER_BYTES}", offset=len(head))
    return np.frombuffer(head, "<i8", 8, 0).copy(), HEADER_BYTES


class NormSource(FormatSource):
    """``source``: a file list (§15.1) or a list of file lists."""

    def resolve(self, source: str | list[str]) -> list[str]:
        lists = [source] if isinstance(source, str) else list(source)
        if not lists:
            raise DataError("<source>", "empty source list; expected a file list path")
        paths = [p for fl in lists for p in read_file_list(fl)]
        check_files_exist(paths, lists[0])
        return paths

    def file_num_samples(self, path: str) -> int:
        hdr, _ = read_norm_header(path, self.config.check_type)
        want = {
            "error_check": 1 if self.config.check_type == "Sum" else 0,
            "label_dim": self.schema.label_dim,
            "dense_dim": self.schema.dense_dim,
            "slot_num": self.schema.total_slots,
        }
        for i, name in enumerate(HEADER_FIELDS):
            if name in want and int(hdr[i]) != want[name]:
                extra = ""
                if name == "error_check":
                    extra = f" (check_type={self.config.check_type!r} expects {want[name]})"
                    if self.config.check_type == "Non" and int(hdr[0]) & 0xFFFFFFFF == 64:
                        extra += "; the file looks like Check_t.Sum framing: set check_type='Sum'"
                elif name == "slot_num":
                    extra = " (the sum of slot_num over the Input's sparse params)"
                raise DataError(path, f"header {name} is {int(hdr[i])}, expected {want[name]}"
                                f"{extra}", offset=8 * i, field=name)
        if hdr[1] < 0:
            raise DataError(path, f"header number_of_records is {int(hdr[1])}", offset=8,
                            field="number_of_records")
        return int(hdr[1])

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        n = self.file_num_samples(path)
        raw = np.memmap(path, dtype=np.uint8, mode="r")  # read-only; decoders copy out of it
        chunk = self._decode_fixed(path, raw, n)
        if chunk is not None:
            pass
        elif self.config.check_type == "Sum":
            chunk = self._parse(path, *self._unframe(path, raw, n))
        else:
            try:
                chunk = self._parse(path, *self._scan_plain(path, raw, n, fast=True))
            except DataError:  # the fixed-layout guess was wrong: scan for real
                chunk = self._parse(path, *self._scan_plain(path, raw, n, fast=False))
        yield chunk.slice(start, stop) if (start, stop) != (0, n) else chunk

    def _decode_fixed(self, path: str, raw: np.ndarray, n: int) -> Chunk | None:
        """All records of one length: decode as a matrix; None when the file is not like that.

        The matrix is an (unaligned, for ``Check_t.Sum``) int32 view of the file bytes: no copy of
        the file is made, columns are copied out directly.
        """
        size = raw.size
        if not n:
            return None
        if self.config.check_type == "Sum":
            pos0 = HEADER_BYTES + 5
            if pos0 + 4 > size:
                return None
            ln = int(raw[pos0 : pos0 + 4].view("<i4")[0])
            stride = ln + 5
            if ln <= 0 or ln % 4 or pos0 + n * stride != size:
                return None
            lens = np.ndarray((n,), dtype="<i4", buffer=raw, offset=pos0, strides=(stride,))
            if (lens != ln).any():
                return None
            rec = raw[pos0:].reshape(n, stride)
            sums = np.add.reduce(rec[:, 4 : 4 + ln], axis=1, dtype=np.uint8)
            stored = rec[:, 4 + ln]
            bad = sums != stored
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(path, f"checksum mismatch: stored {int(stored[i])}, computed "
                                f"{int(sums[i])}", row=i, offset=pos0 + i * stride + 4 + ln,
                                field="checksum")
            words = np.ndarray((n, ln // 4), dtype="<i4", buffer=raw, offset=pos0 + 4,
                               strides=(stride, 4))
            return self._parse_matrix(path, words, pos0 + 4, stride)
        body = raw[HEADER_BYTES:]
        if body.size % 4 or body.size // 4 % n:
            return None
        W = body.size // 4
        words = body.view("<i4").reshape(n, W // n)
        return self._parse_matrix(path, words, HEADER_BYTES, 4 * (W // n))

    def _parse_matrix(self, path: str, m: np.ndarray, off0: int, stride: int) -> Chunk | None:
        """Records of equal length as an ``(n, words)`` matrix: use sample 0's slot layout if every
        sample has it (checked on all ``nnz`` fields at once). Otherwise: with checksum framing
        (record boundaries verified) the general parser, without (the equal length was only a
        guess) None."""
        sch, kw = self.schema, 2 if self.config.i64_input_key else 1
        L, D, S = sch.label_dim, sch.dense_dim, sch.total_slots
        n, Wr = m.shape
        maxnnz = [x for sp in sch.sparse for x in sp.nnz_per_slot]
        p, nnz_cols, nnz0, key_cols = L + D, [], [], []
        for s in range(S):
            if p >= Wr:
                break
            v = int(m[0, p])
            if v < 0 or v > maxnnz[s]:
                break
            nnz_cols.append(p)
            nnz0.append(v)
            key_cols.extend(range(p + 1, p + 1 + v * kw))
            p += 1 + v * kw
        ok = len(nnz0) == S and p == Wr
        one_hot = ok and p - (L + D) == 2 * S and kw == 1  # (nnz, key) pairs
        if one_hot and S:
            ok = not (m[:, L + D :].reshape(n, S, 2)[:, :, 0] != 1).any()
        elif ok and S:
            ok = bool((m[:, nnz_cols] == np.asarray(nnz0, dtype=m.dtype)).all())
        if not ok:
            if self.config.check_type != "Sum":
                return None
            starts = np.arange(n, dtype=np.int64) * Wr
            return self._parse(path, np.ascontiguousarray(m).reshape(-1), starts, starts + Wr,
                               off0 + np.arange(n, dtype=np.int64) * stride)
        ld = np.ascontiguousarray(m[:, : L + D]).view(np.float32)
        labels, dense = ld[:, :L], ld[:, L:]
        check_dense_finite(path, dense, 0)
        if not key_cols:
            keys = np.zeros(0, dtype=np.int64)
        elif one_hot:
            keys = m[:, L + D :].reshape(n, S, 2)[:, :, 1].view(np.uint32).astype(np.int64)
        elif kw == 1:
            keys = m[:, key_cols].view(np.uint32).astype(np.int64)
        else:
            keys = np.ascontiguousarray(m[:, key_cols]).view("<i8")
            if keys.size and keys.min() < 0:
                rows = np.repeat(np.arange(n), len(key_cols) // 2)
                slots = np.tile(np.repeat(np.arange(S), nnz0), n)
                check_keys(path, keys.reshape(-1), slots, None, rows, 0, True)
        k, ln = split_slots(sch, keys.reshape(-1), fixed_lengths(n, nnz0))
        return Chunk(labels, dense, k, ln)

    def _unframe(self, path: str, raw: np.ndarray, n: int):
        buf = memoryview(raw)
        size = raw.size
        rec = np.empty(n, dtype=np.int64)
        lens = np.empty(n, dtype=np.int64)
        pos = HEADER_BYTES + 5
        unpack = struct.Struct("<i").unpack_from
        for i in range(n):
            if pos + 4 > size:
                raise DataError(path, f"truncated file: header announces {n} samples, data ends "
                                f"after {i}", row=i, offset=pos)
            (ln,) = unpack(buf, pos)
            if ln <= 0 or ln % 4 or pos + 5 + ln > size:
                what = "runs past the end of the file (truncated)" if ln > 0 and \
                    pos + 5 + ln > size else "is not a positive multiple of 4"
                raise DataError(path, f"record length {ln} {what}", row=i, offset=pos,
                                field="record length")
            rec[i], lens[i] = pos, ln
            pos += 5 + ln
        if pos != size:
            raise DataError(path, f"{size - pos} unexpected bytes after the {n} records the "
                            "header announces", offset=pos)
        excl = np.concatenate(([0], np.cumsum(lens)[:-1])) if n else np.zeros(0, np.int64)
        total = int(lens.sum())
        idx = np.repeat(rec + 4 - excl, lens) + np.arange(total, dtype=np.int64)
        payload = raw[idx]
        if n:
            sums = np.add.reduceat(payload, excl, dtype=np.uint64) & 0xFF
            stored = raw[rec + 4 + lens]
            bad = sums != stored
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(path, f"checksum mismatch: stored {int(stored[i])}, computed "
                                f"{int(sums[i])}", row=i, offset=int(rec[i] + 4 + lens[i]),
                                field="checksum")
        words = payload.view("<i4")
        return words, excl // 4, (excl + lens) // 4, rec + 4

    def _scan_plain(self, path: str, raw: np.ndarray, n: int, fast: bool):
        body = raw[HEADER_BYTES:]
        if body.size % 4:
            raise DataError(path, f"file size {raw.size} leaves a partial 4-byte word at the end "
                            "(truncated or corrupt)", offset=raw.size - body.size % 4)
        words = body.view("<i4")
        W = words.size
        hw = self.schema.label_dim + self.schema.dense_dim
        kw = 2 if self.config.i64_input_key else 1
        S = self.schema.total_slots
        # Fast path: all samples share sample 0's layout.
        if fast and n and hw + S <= W:
            p = hw
            for _ in range(S):
                if p >= W or words[p] < 0:
                    break
                p += 1 + int(words[p]) * kw
            else:
                if p * n == W:
                    starts = np.arange(n, dtype=np.int64) * p
                    return words, starts, starts + p, HEADER_BYTES + 4 * starts
        # General path: jump table over every word position.
        w64 = words.astype(np.int64)
        f = np.arange(W, dtype=np.int64) + 1 + w64 * kw
        f[(w64 < 0) | (f > W)] = W
        f = np.append(f, W)
        nxt = np.minimum(np.arange(W + 1, dtype=np.int64) + hw, W)
        for _ in range(S):
            nxt = f[nxt]
        starts = np.empty(n, dtype=np.int64)
        cur = 0
        for i in range(n):
            if cur >= W:
                raise DataError(path, f"truncated or corrupt file: header announces {n} samples, "
                                f"could parse {i}", row=i, offset=HEADER_BYTES + 4 * cur)
            starts[i] = cur
            cur = int(nxt[cur])
        ends = np.append(starts[1:], cur)
        return words, starts, ends, HEADER_BYTES + 4 * starts

    def _parse(self, path, words, starts, ends, file_off) -> Chunk:
        sch, kw = self.schema, 2 if self.config.i64_input_key else 1
        L, D, S = sch.label_dim, sch.dense_dim, sch.total_slots
        n = starts.size
        maxnnz = [m for sp in sch.sparse for m in sp.nnz_per_slot]
        W = words.size
        if n and int((ends - starts).min()) < L + D:
            i = int(np.argmin(ends - starts))
            raise DataError(path, "record too short for label and dense values", row=i,
                            offset=int(file_off[i]))
        ld = words[starts[:, None] + np.arange(L + D)].view(np.float32)
        labels, dense = ld[:, :L], ld[:, L:]
        check_dense_finite(path, dense, 0)
        nnz = np.empty((n, S), dtype=np.int64)
        pos = np.empty((n, S), dtype=np.int64)
        p = starts + L + D

        def fail(mask, msg, s):
            i = int(np.flatnonzero(mask)[0])
            raise DataError(path, msg(i), row=i, offset=int(file_off[i] + 4 * (p[i] - starts[i])),
                            field=f"slot {s} nnz")

        for s in range(S):
            if (p >= ends).any():
                fail(p >= ends, lambda i: "sample ends before all slots were read "
                     "(truncated record or slot_num mismatch)", s)
            v = words[np.minimum(p, W - 1)].astype(np.int64)
            bad = (v < 0) | (v > maxnnz[s])
            if bad.any():
                fail(bad, lambda i, v=v, s=s: f"nnz {int(v[i])} outside 0..{maxnnz[s]} "
                     "(nnz_per_slot)", s)
            nnz[:, s], pos[:, s] = v, p
            p = p + 1 + v * kw
        if (p != ends).any():
            i = int(np.flatnonzero(p != ends)[0])
            raise DataError(path, f"slots end at word {int(p[i] - starts[i])} but the record has "
                            f"{int(ends[i] - starts[i])} words", row=i, offset=int(file_off[i]))
        tot = nnz.reshape(-1)
        total = int(tot.sum())
        excl = np.concatenate(([0], np.cumsum(tot)[:-1]))
        idx = np.repeat(pos.reshape(-1) + 1 - excl * kw, tot) + np.arange(total) * kw
        if kw == 1:
            keys = words[idx].view(np.uint32).astype(np.int64)
        else:
            keys = words[idx].view(np.uint32).astype(np.int64) | (
                words[idx + 1].astype(np.int64) << 32)
            if keys.size and keys.min() < 0:
                rows = np.repeat(np.arange(n * S) // S, tot)
                slots = np.repeat(np.arange(n * S) % S, tot)
                check_keys(path, keys, slots, None, rows, 0, True)
        k, ln = split_slots(sch, keys, nnz)
        return Chunk(labels, dense, k, ln)
