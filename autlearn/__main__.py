"""`python -m autlearn`: the `autlearn` command."""

import sys

from autlearn.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
