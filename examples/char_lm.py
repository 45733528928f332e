"""Train a byte-level LSTM language model with streamed truncated BPTT, then sample from it.

    python examples/char_lm.py --quick                 # about a minute on a laptop CPU
    python examples/char_lm.py --steps 3000 --checkpoint-dir runs/charlm
    python examples/char_lm.py --corpus my_text.txt --cell gru --num-layers 2

The same as ``seqjax train-charlm`` (every option is the command's); the code that does
the work is ``seqjax/apps/char_lm.py``: the model, the training loop over windows, evaluation
in bits per character, checkpointing and sampling.
"""

import sys

from seqjax.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-charlm", *sys.argv[1:]]))
