"""`python -m benchmarks [--quick] [subject ...]`: run every benchmark, print one table."""

from __future__ import annotations

import sys

from benchmarks._harness import main

if __name__ == "__main__":
    sys.exit(main())
