"""`python -m zixir_actors` is the `zixir` command."""

from __future__ import annotations

import sys

from zixir_actors.cli import main

if __name__ == "__main__":
    sys.exit(main())
