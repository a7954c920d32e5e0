"""Run under ``torchrun``: the encode driver, with the encoder of one rank failing part-way (a bug or a lost
device), to check that the others stop, no output appears and the staging folder goes."""
import os
import sys

import tevatron.driver.encode as encode_driver

FAILING_RANK = 1


def failing_encode_texts(*args, **kwargs):
    raise RuntimeError("simulated device failure")


if __name__ == "__main__":
    if int(os.environ["RANK"]) == FAILING_RANK:
        encode_driver.encode_texts = failing_encode_texts
    sys.exit(encode_driver.main(sys.argv[1:]))
