"""Train / resume / evaluate QCS (four-branch Quadruplet Cross Similarity). See --help."""
import sys

from utils.train import main

if __name__ == "__main__":
    sys.exit(main("qcs"))
