"""``python -m mfvc_gpu.bench``: the same as ``mfvc-gpu bench`` (the package's command runs it)."""

import runpy
import sys

sys.argv = [sys.argv[0], "bench", *sys.argv[1:]]
runpy.run_module("mfvc_gpu", run_name="__main__", alter_sys=True)
