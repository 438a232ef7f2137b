"""`python -m spfde.report`: the report of finished runs: tables, figures, LaTeX, one HTML page.

The command only; its work is in `spfde.results.report` (`--help` shows the details).
"""

from spfde.errors import exit_on_error
from spfde.results import report

main = exit_on_error(report.main)  # the `spfde-report` command: a user's error is one line, exit status 2

if __name__ == "__main__":
    main()
