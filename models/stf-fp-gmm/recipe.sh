#!/usr/bin/env bash
# the commands that made this model (run from the repository root; seeded, CPU)
set -euo pipefail
export OMP_NUM_THREADS=1  # one thread: the same float reductions, so the same weights bit for bit
scoremc train --target fp-gmm --objective stf --n-ref 256 --steps 20000 --batch-size 512 --seed 0 --out runs/stf-fp-gmm
scoremc ship runs/stf-fp-gmm models/stf-fp-gmm
