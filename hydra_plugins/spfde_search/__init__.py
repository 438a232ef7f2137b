"""The sweeper of spfde's searches (`+search=pareto`, `+search=best_acc`: conf/search/), a subclass of Hydra's
Optuna sweeper. It lives here because Hydra loads sweepers only from the `hydra_plugins` package; what it
adds is described in `spfde.sweeps.search`."""
