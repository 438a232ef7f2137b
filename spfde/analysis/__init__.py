"""The measurements of the paper's Sec. 3 (Fig. 1a, 1b, 3b): the measures (`measures.py`) and the
snapshots taken during training and read after (`snapshots.py`)."""

from spfde.analysis.measures import gram, linear_cka, pack, structural_similarity, top_positions, unpack
from spfde.analysis.snapshots import Analysis, load_snapshots, series

__all__ = ["Analysis", "gram", "linear_cka", "load_snapshots", "pack", "series", "structural_similarity",
           "top_positions", "unpack"]
