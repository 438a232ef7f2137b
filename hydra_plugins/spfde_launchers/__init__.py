"""spfde's launcher: Hydra's submitit SLURM launcher with a refused submission said in one line (Hydra loads
launchers only from the hydra_plugins namespace)."""
