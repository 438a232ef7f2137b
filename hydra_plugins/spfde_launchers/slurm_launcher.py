"""Hydra's submitit SLURM launcher (`launcher=slurm`), with one change: jobs that SLURM refuses at submission (no
such partition, a resource the cluster does not have) end the sweep with one line, not submitit's traceback.
Hydra imports every plugin module at start-up: without hydra-submitit-launcher (a GPU machine with a bare
environment) this module defines nothing."""

from __future__ import annotations

import contextlib
import sys

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:
    SubmititSlurmLauncher = None


class _WithoutSbatchErrors:
    """sys.stderr, less the `sbatch: error` text submitit prints before raising it (the one line says it)."""

    def __init__(self, stream):
        self.stream, self.dropped = stream, False

    def write(self, text: str) -> int:
        dropped, self.dropped = self.dropped, text.startswith("sbatch: error")
        if self.dropped or (dropped and text == "\n"):  # print() writes its line end apart
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


if SubmititSlurmLauncher is not None:

    class SlurmLauncher(SubmititSlurmLauncher):
        def launch(self, job_overrides, initial_job_idx):
            from submitit.core.utils import FailedJobError

            try:
                with contextlib.redirect_stderr(_WithoutSbatchErrors(sys.stderr)):
                    return super().launch(job_overrides, initial_job_idx)
            except FailedJobError as e:
                first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
                if not first.startswith("sbatch: error"):
                    raise  # a job that failed while it ran: submitit's report of it
                print(f"spfde: error: SLURM refused the sweep's jobs ({first}); nothing was submitted: check "
                      "hydra.launcher.partition, gpus_per_node, cpus_per_task, mem_gb and timeout_min against `sinfo` "
                      "(or your cluster's launcher config)", file=sys.stderr)
                sys.exit(2)
