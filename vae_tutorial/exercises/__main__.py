"""`python -m vae_tutorial.exercises FILE.py`: check every exercise function FILE defines."""

import sys

from . import main

sys.exit(main())
