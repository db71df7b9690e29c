"""k-nearest-neighbour probes on cosine similarity (no training).

* :func:`knn_classify`: the ``knn`` probe (DINO-style weighted vote, :func:`knn_predict`) on
  image embeddings.
* :func:`knn_segment`: the ``seg_knn`` probe (CAPI-style) on patch embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

#: most similarity entries (queries x bank items) one chunk of :func:`_neighbours` holds: a bank
#: of iNat21's 2.7M training images is searched ~100 queries at a time (1 GB in float32)
SIM_BUDGET = 2**28


def _neighbours(
    bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Cosine top-``k`` of each query in ``bank``, a chunk of queries at a time (fewer than
    ``chunk`` when the bank is so large that ``chunk x M`` would exceed :data:`SIM_BUDGET`).

    bank (M, D), queries (Q, D), any float dtype and device -> yields
    (start, sims (q, k) float32, indices (q, k) long) sorted by decreasing similarity.
    """
    # half precision on CUDA (tensor cores), float32 on the CPU
    dtype = torch.float16 if bank.device.type == "cuda" else torch.float32
    b = F.normalize(bank.float(), dim=-1).to(dtype)
    k = min(k, b.shape[0])
    chunk = max(1, min(chunk, SIM_BUDGET // max(1, b.shape[0])))
    for s in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[s : s + chunk].float(), dim=-1).to(dtype)
        sims, idx = (q @ b.T).float().topk(k, dim=-1)
        yield s, sims, idx


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor,
    bank_y: torch.Tensor,
    queries: torch.Tensor,
    ks: Sequence[int],
    classes: int,
    temperature: float = 0.07,
) -> dict[int, torch.Tensor]:
    """The class of every query by a weighted vote of its ``k`` nearest bank items, for every
    ``k`` in ``ks``.

    Each neighbour votes for its label with weight ``exp(cos / temperature)``; ties go to the
    lowest class index. The votes of a chunk of ``q`` queries are one ``(q, classes)`` tensor
    that neighbours are added into in order of rank (never a ``(q, k, classes)`` one-hot:
    4 GB for iNat21's 10,000 classes at ``k = 100``). Sums run in float64 and are compared in
    float32, which is what the cumulative sum of the one-hot votes gave on the CPU.

    bank (M, D), bank_y (M,), queries (Q, D) -> ``{k: (Q,) long}`` on the CPU.
    """
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    by = bank_y.to(bank.device)
    order = sorted(set(ks))
    for _, sims, idx in _neighbours(bank, queries, max(order)):
        w = (sims / temperature).exp().double()
        nb = by[idx]
        votes = torch.zeros(nb.shape[0], classes, dtype=torch.float64, device=nb.device)
        done = 0
        for k in order:
            for j in range(done, min(k, nb.shape[1])):  # one neighbour per row and call: a fixed order
                votes.scatter_add_(1, nb[:, j : j + 1], w[:, j : j + 1])
            done = max(done, min(k, nb.shape[1]))
            out[k].append(votes.float().argmax(-1).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in out.items()}


@torch.no_grad()
def knn_classify(
    bank: torch.Tensor,
    bank_y: torch.Tensor,
    queries: torch.Tensor,
    query_y: torch.Tensor,
    ks: Sequence[int],
    classes: int,
    temperature: float = 0.07,
) -> dict[int, float]:
    """Top-1 accuracy (percent) of :func:`knn_predict` for every ``k`` in ``ks``.

    bank (M, D), bank_y (M,), queries (Q, D), query_y (Q,).
    """
    preds = knn_predict(bank, bank_y, queries, ks, classes, temperature)
    truth = query_y.cpu()
    n = max(1, query_y.shape[0])
    return {k: round(100.0 * int((preds[k] == truth).sum()) / n, 4) for k in ks}


@torch.no_grad()
def knn_segment(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    ks: Sequence[int],
    classes: int,
    ignore_index: int = 255,
    chunk: int = 256,
) -> dict[int, torch.Tensor]:
    """Label every pixel of every query patch by a majority vote of its neighbours.

    The bank holds the training patches' embeddings and, for each, the ``p x p`` pixel labels
    under it. A query patch's pixel at offset ``(i, j)`` takes the most frequent label among
    its ``k`` nearest bank patches' pixels at the same offset (ignored pixels do not vote;
    ties and all-ignored votes go to the lowest class index).

    Args:
        bank: ``(M, D)`` patch embeddings.
        bank_labels: ``(M, p*p)`` integer pixel labels (``ignore_index`` allowed; int16 keeps a
            large bank small).
        queries: ``(Q, D)`` patch embeddings.
        ks: neighbourhood sizes.

    Returns:
        ``{k: (Q, p*p) long predicted labels}`` on the CPU.
    """
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    lab = bank_labels.to(bank.device)
    valid_lab = torch.where(lab == ignore_index, classes, lab)  # ignored -> extra bin
    order = sorted(ks)
    for _, _, idx in _neighbours(bank, queries, max(order), chunk):
        nb = valid_lab[idx].transpose(1, 2).long()  # (q, P, K)
        counts = torch.zeros(nb.shape[0], nb.shape[1], classes + 1, dtype=torch.int32, device=nb.device)
        done = 0
        for k in order:
            k_eff = min(k, nb.shape[2])
            part = nb[:, :, done:k_eff]
            counts.scatter_add_(2, part, torch.ones_like(part, dtype=torch.int32))
            done = k_eff
            out[k].append(counts[..., :classes].argmax(-1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}
