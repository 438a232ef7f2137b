"""`python -m spfde.dashboard`: a sweep's wandb workspace and report, as a spec (and saved with --save).

The command only; its work is in `spfde.results.dashboard` (`--help` shows the details).
"""

from spfde.errors import exit_on_error
from spfde.results import dashboard

main = exit_on_error(dashboard.main)  # the `spfde-dashboard` command: a user's error is one line, exit status 2

if __name__ == "__main__":
    main()
