"""Before a run: what it will cost and whether it fits.

- `plan`: `python -m spfde.plan`, the FLOPs, memory and calibrated hours of a run or sweep, no training.
- `calibrate`: times a few real steps on this machine to turn FLOPs into hours.
- `budget`: the x%+y% settings that fit a budget of hours, FLOPs or memory.

May import training (to assemble a model on the meta device and time steps), the checks and the results.
"""
