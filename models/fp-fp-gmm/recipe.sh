#!/usr/bin/env bash
# the commands that made this model (run from the repository root; seeded, CPU)
set -euo pipefail
export OMP_NUM_THREADS=1  # one thread: the same float reductions, so the same weights bit for bit
scoremc train --target fp-gmm --objective fp --steps 5000 --batch-size 256 --seed 0 --out runs/fp-fp-gmm
scoremc ship runs/fp-fp-gmm models/fp-fp-gmm
