import os

# torch's OpenMP threads busy-wait for each other; on a loaded machine that costs 10x or more.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from nnmark.cli import main  # noqa: E402

main(prog_name="nnmark")
