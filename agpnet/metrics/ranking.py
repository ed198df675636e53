"""Curve statistics (AUROC, AP, F1-max, AUPRO) from one descending sort of scores.

Every item (an image or a pixel) has a score and a group id: 0 = normal, > 0 = anomalous
(for pixels, the id of its ground-truth region). After one sort by descending score, the
counts at every threshold are cumulative sums in that order; a block of equal scores is one
threshold, so only the last position of each block is a curve point.

The same code runs on numpy arrays and on torch tensors (any device). Counts are int64 and
cumulative weights float64, so results agree with scikit-learn to ~1e-12.

Sorting: float16/bfloat16/float32 scores (and float64 scores that are exact in float32) are
packed with their id into one int64 key whose ascending order is descending score; the keys
are sorted by value (numpy's fast in-place sort for host data, `torch.sort` on other devices).
Other float64 scores take a stable argsort (exact, about 10x slower on the CPU).
After the sort, the arrays are read in chunks (`CHUNK_HOST` / `CHUNK_DEVICE` items), so the
temporaries stay bounded (~100 B per chunk item) whatever the number of items.
"""

import math
from collections.abc import Iterator

import numpy as np
import torch

CHUNK_HOST = 1 << 16  # items per streaming step for host data
CHUNK_DEVICE = 1 << 22  # items per streaming step for accelerator tensors

_LOW32 = 0xFFFFFFFF
_FLOAT32_LIKE = (np.float16, np.float32, torch.float16, torch.bfloat16, torch.float32)


def is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def fits_float32(scores) -> bool:
    """True when every score is exactly representable as float32 (no rounding when packed)."""
    if scores.dtype in _FLOAT32_LIKE:
        return True
    if is_torch(scores):
        return bool((scores.float().double() == scores).all())
    return bool((scores.astype(np.float32) == scores).all())


def pack_key(scores, ids, out):
    """Write int64 keys ordered as (descending score, ascending id) into `out` and return it.

    scores: 1-D floats exact in float32, no NaN; ids: 1-D ints in [0, 2**31); out: 1-D int64;
    same backend and device. High half: the float32 bits as an int32 of the same order
    (negative floats get their low 31 bits flipped), inverted for descending order; low half: the id.
    """
    if is_torch(scores):
        bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
        bits ^= (bits >> 31) & 0x7FFFFFFF
        out.copy_(torch.bitwise_not(bits, out=bits))
    else:
        bits = np.add(scores, np.float32(0.0), dtype=np.float32).view(np.int32)
        bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
        out[...] = np.invert(bits, out=bits)
    out <<= 32
    out |= ids
    return out


class DescendingOrder:
    """Items sorted by descending score; `chunks()` reads them back with their ids."""

    def __init__(self, key=None, scores=None, ids=None):
        # Use the constructors `from_key`, `from_scores` or `by_argsort`.
        self._key, self._scores, self._ids = key, scores, ids

    @classmethod
    def from_key(cls, key) -> "DescendingOrder":
        """Sort packed keys (see `pack_key`); a host array or CPU tensor is sorted in place."""
        if not is_torch(key):
            key.sort()
        elif key.device.type == "cpu":
            key.numpy().sort()  # numpy's vectorised sort is several times faster than torch's on the CPU
        else:
            key = torch.sort(key).values
        return cls(key=key)

    @classmethod
    def from_scores(cls, scores, ids) -> "DescendingOrder":
        """scores: 1-D float, no NaN; ids: 1-D non-negative ints < 2**31; same backend/device."""
        if fits_float32(scores):
            return cls.from_key(pack_key(scores, ids, _empty_int64(len(scores), scores)))
        return cls.by_argsort(scores, ids)

    @classmethod
    def by_argsort(cls, scores, ids) -> "DescendingOrder":
        """Stable argsort of any float scores (exact for float64; slower than packed keys)."""
        if is_torch(scores):
            scores, order = torch.sort(scores, descending=True, stable=True)
        else:
            order = np.argsort(-scores, kind="stable")
            scores = scores[order]
        return cls(scores=scores, ids=ids[order])

    def __len__(self) -> int:
        return len(self._key) if self._key is not None else len(self._scores)

    def _read(self, start: int, stop: int):
        if self._key is None:
            return self._scores[start:stop], self._ids[start:stop]
        key = self._key[start:stop]
        return key >> 32, key & _LOW32

    def chunks(self) -> Iterator:
        """Yield (start, is_last_of_tie_block, ids), 1-D slices of `CHUNK_HOST` items on the host
        (cache-sized) or `CHUNK_DEVICE` items on an accelerator (few kernel launches)."""
        n = len(self)
        first = self._key if self._key is not None else self._ids
        size = CHUNK_DEVICE if is_torch(first) and first.device.type != "cpu" else CHUNK_HOST
        for start in range(0, n, size):
            stop = min(start + size, n)
            tokens, ids = self._read(start, min(stop + 1, n))  # one item ahead to see block ends
            is_last = tokens[1:] != tokens[:-1]
            if stop == n:
                is_last = _concat(is_last, _full_like(is_last, 1, True))
            yield start, is_last, ids[: stop - start]


def block_points(order: DescendingOrder, weights=None, weights_until: float = math.inf) -> Iterator:
    """Yield the curve points chunk by chunk: (tp, fp, pro) at the last item of each tie block.

    tp, fp: int64 numbers of anomalous / normal items scored >= that threshold;
    pro: float64 cumulative `weights[id]`, or None without `weights` and for the chunks that
    start after the point where fp reached `weights_until` (AUPRO needs no more of it).
    """
    tp_run, pro_run, fp_point = 0, 0.0, 0  # cumulative sums before the chunk; fp of the last point
    for start, is_last, ids in order.chunks():
        tp = _cumsum(ids > 0, torch.int64, np.int64) + tp_run
        where = _nonzero(is_last)
        tp_at = tp[where]
        fp_at = where + (start + 1) - tp_at
        tp_run = int(tp[-1])
        pro_at = None
        if weights is not None and fp_point < weights_until:
            pro = _cumsum(weights[ids], torch.float64, np.float64) + pro_run
            pro_run = float(pro[-1])
            pro_at = pro[where]
        if len(where):
            fp_point = int(fp_at[-1])
        yield tp_at, fp_at, pro_at


def curve_metrics(
    order: DescendingOrder, n_pos: int, n_neg: int, weights=None, fpr_limit: float = 0.3
) -> dict:
    """AUROC, AP, F1-max (and AUPRO when region `weights` are given) of the sorted items.

    AUROC: trapezoid over the ROC from (0, 0), computed exactly in integers (= Mann-Whitney,
    ties count 1/2). AP: sum over points of (R_k - R_k-1) * P_k. F1-max: max of 2PR/(P+R).
    AUPRO: trapezoid over (FPR, PRO) from (0, 0) up to `fpr_limit`, PRO interpolated linearly
    there, divided by `fpr_limit`. Undefined values (no positives/negatives) are NaN.
    """
    defined = n_pos > 0 and n_neg > 0
    with_pro = weights is not None and defined
    fp_limit = _first_count_at(fpr_limit, n_neg) if with_pro else math.inf
    tp_prev, fp_prev, pro_prev = 0, 0, 0.0
    auc_twice, ap_sum, f1_max, pro_area = 0, 0.0, 0.0, 0.0
    for tp, fp, pro in block_points(order, weights if with_pro else None, fp_limit):
        if len(tp) == 0:
            continue
        tp0, fp0 = _shift_in(tp, tp_prev), _shift_in(fp, fp_prev)
        auc_twice += int(((fp - fp0) * (tp + tp0)).sum())
        tp_f, n_at = _float64(tp), tp + fp
        ap_sum += float(((tp - tp0) * tp_f / n_at).sum())
        f1_max = max(f1_max, float((2 * tp_f / (n_at + n_pos)).max()))
        if pro is not None:
            cut = int((fp < fp_limit).sum()) + 1  # later segments start at FPR >= fpr_limit
            fpr0 = _shift_in(_float64(fp[:cut]), fp_prev) / n_neg
            fpr = _float64(fp[:cut]) / n_neg
            pro_area += _area_until(fpr0, _shift_in(pro[:cut], pro_prev), fpr, pro[:cut], fpr_limit)
            pro_prev = float(pro[-1])
        tp_prev, fp_prev = int(tp[-1]), int(fp[-1])
    result = {
        "auroc": auc_twice / (2 * n_pos * n_neg) if defined else float("nan"),
        "ap": ap_sum / n_pos if n_pos > 0 else float("nan"),
        "f1max": f1_max if n_pos > 0 else float("nan"),
    }
    if weights is not None:
        result["aupro"] = pro_area / fpr_limit if defined else float("nan")
    return result


def _first_count_at(fraction: float, total: int) -> int:
    """Smallest count c with c / total >= fraction (in float64, as the FPR is computed)."""
    count = math.ceil(fraction * total)
    while count > 0 and (count - 1) / total >= fraction:
        count -= 1
    while count / total < fraction:
        count += 1
    return count


def _area_until(x0, y0, x1, y1, limit: float) -> float:
    """Trapezoid area of the segments (x0, y0)-(x1, y1) left of x = limit (y interpolated at it)."""
    crossing = (x0 < limit) & (x1 > limit)
    step = x1 - x0
    at_limit = y0 + (y1 - y0) * (limit - x0) / _where(crossing, step, 1.0)
    y_end = _where(crossing, at_limit, y1)
    width = _minimum(x1, limit) - _minimum(x0, limit)
    return float((width * (y0 + y_end)).sum()) / 2


# Small numpy/torch shims: the only places where the two backends are spelled differently.


def _cumsum(x, torch_dtype, numpy_dtype):
    return torch.cumsum(x, 0, dtype=torch_dtype) if is_torch(x) else np.cumsum(x, dtype=numpy_dtype)


def _empty_int64(n: int, like):
    return torch.empty(n, dtype=torch.int64, device=like.device) if is_torch(like) else np.empty(n, np.int64)


def _nonzero(mask):
    return torch.nonzero(mask).squeeze(1) if is_torch(mask) else np.flatnonzero(mask)


def _float64(x):
    return x.to(torch.float64) if is_torch(x) else x.astype(np.float64)


def _concat(a, b):
    return torch.cat((a, b)) if is_torch(a) else np.concatenate((a, b))


def _full_like(x, n: int, value):
    if is_torch(x):
        return torch.full((n,), value, dtype=x.dtype, device=x.device)
    return np.full(n, value, dtype=x.dtype)


def _shift_in(x, first):
    """[first, x[0], ..., x[-2]]: the previous point of each point."""
    return _concat(_full_like(x, 1, first), x[:-1])


def _where(cond, a, b):
    if is_torch(cond):
        return torch.where(cond, a, torch.as_tensor(b, dtype=a.dtype, device=a.device))
    return np.where(cond, a, b)


def _minimum(x, limit: float):
    return torch.clamp(x, max=limit) if is_torch(x) else np.minimum(x, limit)
