"""Train / resume / evaluate DCS (two-branch Dual Cross Similarity). See --help."""
import sys

from utils.train import main

if __name__ == "__main__":
    sys.exit(main("dcs"))
