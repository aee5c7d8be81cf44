"""``python -m bench``: the performance benchmark (bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
