"""Sweeps and the search over the x%+y% trade-off.

- `search`: the search's settings, objectives and budget (its Hydra sweeper is `hydra_plugins.spfde_search`).
- `callbacks`: what runs after a sweep (its report, locks released).

May import planning, the checks, the results and everything below them.
"""
