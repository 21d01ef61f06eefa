"""Stage ``network``: the K x K Tx -> Rx PSNR matrix of every method (see ``ablate.py``)."""
from . import run
from .ablate import network_main

if __name__ == "__main__":
    run(network_main)
