"""SET — Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
connectivity inspired by network science", Nature Communications 2018.

Like RigL's schedule, but new connections are chosen uniformly at random: drop the fraction ζ of
active weights with the smallest magnitude and grow as many at random positions (zero-initialised).
The paper updates after every epoch with ζ = 0.3 and no decay (the defaults in conf/sparsity/set.yaml).
"""

from __future__ import annotations

from spfde.sparse.rigl import RigL


class SET(RigL):
    name = "set"
    label = "SET"
    uses_gradients = False
    grow = "random"
    # SET's code (SET-MLP-Keras-Weights-Mask, rewireMask/weightsEvolution) keeps only the surviving weights: a
    # removed position added again at random restarts at zero (RigL's own SET keeps its value)
    reinit_when_same = True
