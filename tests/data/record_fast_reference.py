"""Write tests/data/fast_reference.json: the fast preset's weights after two epochs (seed 0, one
thread, the exact subset), in fp32 and in bf16 autocast, as test_train.py's reference test reads
them. Run it only on purpose, when the trainer's behaviour is meant to change:

    VAE_TUTORIAL_TEST_DATA=/path/to/cifar10-subset \
        .venv/bin/python tests/data/record_fast_reference.py
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import SUBSET  # noqa: E402
from test_train import REFERENCE, fast_reference_run, init_sketch  # noqa: E402

from vae_tutorial import runtime  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    ref = {"what": "weights after two epochs of the fast preset on the exact subset, seed 0, one "
                   "thread (tests/data/record_fast_reference.py); sha256 of the weights and a "
                   "sketch (64 seeded random projections) of them, and of the initial weights",
           **runtime.cpu_identity(), "init_sketch": init_sketch()}
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as out:
            result = fast_reference_run(SUBSET, Path(out), precision)
        ref[result["precision"]] = result
    REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {REFERENCE}: {', '.join(k for k in ('fp32', 'bf16') if k in ref)}")


if __name__ == "__main__":
    main()
