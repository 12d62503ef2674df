#!/usr/bin/env bash
# The README's fine-tuning table: pre-train the tiny default, fine-tune it three ways with
# configs/finetune.py, and compare them (about 10 minutes on 2 CPU cores).
#
#   bash benchmarks/finetune_compare.sh [SCRATCH_DIR]     # prints SCRATCH_DIR/runs/compare/report.md
set -euo pipefail
scratch="${1:-$(mktemp -d)}"
mkdir -p "$scratch" && cd "$scratch"
quiet=(--config.train.progress_bar=false)
t5x-lite train "${quiet[@]}"                                            # ./runs/default
for method in full lora prompt; do
  t5x-lite train --config "configs/finetune.py:method=$method" "${quiet[@]}"
done
t5x-lite compare --out runs/compare \
  --workdirs runs/finetune_full_tiny runs/finetune_lora_tiny runs/finetune_prompt_tiny
