"""Training: the loop and what it calls at its place in the epoch.

- `loop`: `train(cfg)`, one run from its checkpoint to its summary; `state`: the run state that checkpoints
  itself (model, optimizer, method, cost meter, freezer, sieve, RNG, records) and the summary.
- `step`: one training step (eager or a CUDA graph) and evaluation batches.
- `build`: assembles a run's parts from the config (device, data, model, method, freezer, sieve).
- `freeze`: progressive layer freezing (paper Sec. 4.2); `sieve`: circular data sieving (Sec. 4.3);
  `cost`: the training FLOPs and memory model and the meter that counts them (Sec. 5 conventions);
  `schedule`: learning-rate and freezing schedules; `rounds`: LTH's rounds; `distributed`: several ranks;
  `log`: the console lines, metrics and wandb.

May import: `spfde.sparse`, `spfde.models`, `spfde.data`, `spfde.analysis`, `spfde.rundir`, `spfde.config`,
`spfde.errors`. Never the checks, planning, sweeps, results or the commands (`make lint` checks this).
"""
