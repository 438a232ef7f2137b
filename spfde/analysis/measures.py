"""The similarity measures of the paper's Sec. 3: linear CKA between blocks' outputs (Fig. 1a), and the
structural similarity of a layer's top-magnitude weights to its final mask (Fig. 1b); bit-packed masks."""

from __future__ import annotations

import numpy as np
import torch

# ----------------------------------------------------------------------------- CKA (Kornblith et al. 2019)


def gram(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix of a batch of representations (flattened per sample), in float64."""
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def pack_gram(k: torch.Tensor) -> torch.Tensor:
    """A Gram matrix as a snapshot keeps it: its upper triangle (it is symmetric) in float32, a quarter of the
    float64 matrix (a ResNet-32 snapshot then takes ~2 MB, not ~9)."""
    rows, cols = torch.triu_indices(k.shape[0], k.shape[0])
    return k[rows, cols].float()


def unpack_gram(packed: torch.Tensor) -> torch.Tensor:
    """The float64 Gram matrix of `pack_gram`'s triangle (a full matrix, as older snapshots hold it, as it is)."""
    if packed.dim() == 2:
        return packed.double()
    n = int(round(((8 * packed.numel() + 1) ** 0.5 - 1) / 2))
    rows, cols = torch.triu_indices(n, n)
    k = torch.zeros(n, n, dtype=torch.float64)
    k[rows, cols] = packed.double()
    k[cols, rows] = packed.double()
    return k


def center(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - 1.0 / n
    return h @ k @ h


def hsic(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> torch.Tensor:  # noqa: E741 - the paper's names
    n = k.shape[0]
    if not debiased:
        return (center(k) * center(l)).sum() / (n - 1) ** 2
    # the unbiased estimator of Song et al. (2012), as in Kornblith et al.'s code (needs n > 3)
    k, l = k.clone(), l.clone()  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    term = (k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return term / (n * (n - 3))


def linear_cka(k: torch.Tensor, l: torch.Tensor, debiased: bool = False) -> float:  # noqa: E741
    """Linear CKA between two representations given by their Gram matrices."""
    kl = hsic(k, l, debiased)
    return float(kl / torch.sqrt(hsic(k, k, debiased) * hsic(l, l, debiased)))


# ----------------------------------------------------------------------------- structural similarity


def top_positions(weight: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean map of the `fraction` largest-magnitude non-zero weights (paper Sec. 3.1: the top 50%)."""
    nonzero = mask & (weight != 0)
    k = int(round(fraction * int(nonzero.sum())))
    out = torch.zeros(weight.numel(), dtype=torch.bool)
    if k > 0:
        scores = weight.detach().abs().flatten().cpu().masked_fill(~nonzero.flatten().cpu(), -1.0)
        out[torch.topk(scores, k).indices] = True
    return out.view(weight.shape)


def structural_similarity(top: torch.Tensor, final_mask: torch.Tensor) -> float:
    """Share of a snapshot's top non-zero positions that are still non-zero in the final model."""
    total = int(top.sum())
    return float((top & final_mask).sum()) / total if total else float("nan")


def pack(mask: torch.Tensor) -> dict:
    return {"bits": torch.from_numpy(np.packbits(mask.cpu().numpy().ravel())), "shape": tuple(mask.shape)}


def unpack(packed: dict) -> torch.Tensor:
    n = int(np.prod(packed["shape"]))
    return torch.from_numpy(np.unpackbits(packed["bits"].numpy())[:n].astype(bool)).view(packed["shape"])
