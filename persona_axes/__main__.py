"""``python -m persona_axes ...``: the same command line as ``persona-axes ...``."""

import sys

from persona_axes.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
