#!/bin/bash
# pagesim calibrate + validate on a lent H200 (the device tool), run from a
# folder holding this branch's tree, the traces under tr/ and the simpy wheel
# under .whl/. Everything lands in $R and is packed into $OUT/res<MODE>.tar.gz.
#   MODE=1: calibrate, then validate a copy-on-write/swap workload, 120
#           Mooncake requests and the first 60 s of the Azure conversation trace
#   MODE=2: validate the first AZURE_S seconds of the Azure conversation trace
# Note: the device tool sends the session's main checkout, not a helper's
# worktree (and its .git holds main's history only). The 2026-12-04 record
# was made by sending this branch's diff against main in base64 chunks to
# /tmp on the warm machine, applying it to `git archive` of main there, and
# running the same commands as below (calibrate 226 s, validations 64-326 s).
MODE=${1:-1}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
R=/tmp/res$MODE; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/device.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a $R/device.txt
finish() { tar -czf $OUT/res$MODE.tar.gz -C $R . ; }
trap finish EXIT
CAL=${CAL:-$R/llama-3-8b_h200.json}
if [ "$MODE" = 1 ]; then
  t0=$(date +%s)
  timeout ${CAL_S:-270} python3 -m pagesim calibrate --model llama-3-8b --out $CAL --quiet > $R/calibrate.log 2>&1
  tail -22 $R/calibrate.log
  echo "calibrate: $(( $(date +%s) - t0 )) s"
fi
[ -f $CAL ] || CAL=calibration/llama-3-8b_h200.json
val() { local name=$1 lim=$2; shift 2; local t=$(date +%s)
  timeout $lim python3 -m pagesim validate "$@" --calibration $CAL --out $R/val_$name > $R/val_$name.log 2>&1
  tail -13 $R/val_$name.log; echo "validate $name: $(( $(date +%s) - t )) s"; }
if [ "$MODE" = 1 ]; then
  val cowswap 110 tr/AzureLLMInferenceTrace_conv.csv --limit 100 --n 4 --scheduler v0 --preemption swap --num-gpu-blocks 400
  val mooncake 110 tr/conversation_trace.jsonl --limit 120
  val azure60 130 tr/AzureLLMInferenceTrace_conv.csv --duration-s 60
else
  val azure 560 tr/AzureLLMInferenceTrace_conv.csv --duration-s ${AZURE_S:-240}
fi
