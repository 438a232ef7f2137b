"""Results of finished and running runs; none of it trains, and none of it imports torch when it loads.

- `runs`: finding run directories and reading their results; grouping seeds.
- `report`: `python -m spfde.report`, tables and figures (`figures`), `tex` (LaTeX), `html` (index page),
  `pareto` (the accuracy-FLOPs front).
- `status`: `python -m spfde.status`, a sweep's progress; `dashboard`: wandb workspace and report specs;
  `analyses`: the figures of the Sec. 3 analyses (`python -m spfde.analyze`).

May import `spfde.rundir`, `spfde.config`, `spfde.errors`, and (inside functions, for the few figures that
need it) the method registry. Never training (`make lint` checks this).
"""
