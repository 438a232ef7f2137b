"""Static sparse training: a uniformly random mask at initialisation that never changes
(the fixed-mask baseline, e.g. Liu et al. 2022 "The unreasonable effectiveness of random pruning")."""

from __future__ import annotations

from spfde.sparse.base import SparseMethod


class Static(SparseMethod):
    name = "static"
    label = "Static"
