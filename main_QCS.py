"""Train / resume / evaluate QCS (four-branch Quadruplet Cross Similarity). See --help."""
import sys

from utils.settings import parse_or_exit

if __name__ == "__main__":
    parse_or_exit("qcs")  # --help and usage errors answer before torch is imported
    from utils.train import main

    sys.exit(main("qcs"))
