"""`python -m spfde.status`: a sweep's progress, run by run, without torch.

The command only; its work is in `spfde.results.status` (`--help` shows the details).
"""

from spfde.errors import exit_on_error
from spfde.results import status

main = exit_on_error(status.main)  # the `spfde-status` command: a user's error is one line, exit status 2

if __name__ == "__main__":
    main()
