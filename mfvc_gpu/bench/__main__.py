"""``python -m mfvc_gpu.bench``: the same as ``mfvc-gpu bench``."""

import sys

from mfvc_gpu.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
