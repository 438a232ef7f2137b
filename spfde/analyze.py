"""`python -m spfde.analyze`: the figures of the Sec. 3 analyses of runs trained with analysis=true.

The command only; its work is in `spfde.results.analyses` (`--help` shows the details).
"""

from spfde.errors import exit_on_error
from spfde.results import analyses

main = exit_on_error(analyses.main)  # the `spfde-analyze` command: a user's error is one line, exit status 2

if __name__ == "__main__":
    main()
