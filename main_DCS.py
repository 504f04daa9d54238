"""Train / resume / evaluate DCS (two-branch Dual Cross Similarity). See --help."""
import sys

from utils.settings import parse_or_exit

if __name__ == "__main__":
    parse_or_exit("dcs")  # --help and usage errors answer before torch is imported
    from utils.train import main

    sys.exit(main("dcs"))
