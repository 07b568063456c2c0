"""`python -m fastervlm ...` (also what torchrun runs: `torchrun ... -m fastervlm eval predict ...`)."""

import sys

from fastervlm.cli import main

sys.exit(main())
