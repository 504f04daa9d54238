"""Train / resume / evaluate QCS (four-branch Quadruplet Cross Similarity). See --help."""
import sys

from utils.settings import parse_args

if __name__ == "__main__":
    parse_args("qcs")  # --help and malformed options answer before torch is imported
    from utils.train import main

    sys.exit(main("qcs"))
