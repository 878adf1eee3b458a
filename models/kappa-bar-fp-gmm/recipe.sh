#!/usr/bin/env bash
# the commands that made this model (run from the repository root; seeded, CPU)
set -euo pipefail
export OMP_NUM_THREADS=1  # one thread: the same float reductions, so the same weights bit for bit
scoremc train --target fp-gmm --objective kappa_bar --steps 20000 --batch-size 512 --seed 0 --out runs/kappa-bar-fp-gmm
scoremc ship runs/kappa-bar-fp-gmm models/kappa-bar-fp-gmm
