#!/usr/bin/env bash
# The GPU check, in one prepared script (under 8 minutes on one GPU): the quick start on CUDA in bf16 with LoRA and
# QLoRA, `tunelab eval`, `tunelab serve` answering the official openai client, and `tunelab export` to merged and
# GGUF. It prints the device, tokens/s and the base/tuned table of each run.
#
#   bash bench/gpu_smoke.sh                  # on a machine with a CUDA GPU (the default DEVICE=cuda)
#   DEVICE=cpu STEPS=2 ROWS=60 bash bench/gpu_smoke.sh   # the same script, shortened, to try it on a CPU
#
# Needs the project's virtualenv (make install) or PYTHON pointing at an interpreter with tunelab installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-60}
ROWS=${ROWS:-400}
OUT=${SMOKE_DIR:-runs/gpu-smoke}
export TUNELAB_HOME=${TUNELAB_HOME:-$HOME/.cache/tunelab}
tunelab() { "$PYTHON" -m tunelab "$@"; }

"$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}", flush=True)
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}", flush=True)
elif sys.argv[1] == "cuda":
    sys.exit("no CUDA GPU visible: run with DEVICE=cpu to try the script on a CPU")
EOF

common=(data.generate.rows="$ROWS" train.max_steps="$STEPS" train.eval_every="$STEPS" train.save_every="$STEPS"
        eval.max_rows=20 --device "$DEVICE" --overwrite)
started=$SECONDS
for method in lora qlora; do
    recipe=recipes/quickstart.yaml
    [ "$method" = qlora ] && recipe=recipes/quickstart-qlora.yaml
    echo "=== train $method on $DEVICE ($STEPS steps)"
    # exit 3 (objective not met) is a result, not a failure of the check
    tunelab train "$recipe" output.dir="$OUT/$method" "${common[@]}" || [ $? -eq 3 ]
    "$PYTHON" - "$OUT/$method" <<'EOF'
import json, sys
record = json.load(open(f"{sys.argv[1]}/run.json"))
print(f"{sys.argv[1]}: device {record['device']} {record['precision']}, "
      f"{record['training']['train_tokens_per_second']:.0f} training tokens/s", flush=True)
EOF
done

echo "=== eval (lora run again, on $DEVICE)"
tunelab eval "$OUT/lora" --device "$DEVICE" || [ $? -eq 3 ]

echo "=== serve + the openai client"
PORT=${PORT:-8765}
tunelab serve "quick=$OUT/lora" --port "$PORT" --device "$DEVICE" --serve-dir "$OUT/serve" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
"$PYTHON" - "$PORT" <<'EOF'
import sys, time, urllib.request
import openai
port = sys.argv[1]
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
note = "Turn this order note into JSON. Note: Ana Silva needs 3 red mugs in Porto on Friday."
started = time.perf_counter()
answer = client.chat.completions.create(model="quick", temperature=0, max_tokens=96, messages=[
    {"role": "system", "content": "You convert order notes to JSON."}, {"role": "user", "content": note}])
seconds = time.perf_counter() - started
print(f"served answer ({answer.usage.completion_tokens} tokens, "
      f"{answer.usage.completion_tokens / seconds:.0f} tokens/s): {answer.choices[0].message.content}", flush=True)
EOF
kill $server; wait $server 2>/dev/null || true
trap - EXIT

for format in merged gguf; do
    echo "=== export $format"
    tunelab export "$OUT/lora" --format "$format" --out "$OUT/export-$format" --overwrite --device "$DEVICE"
done
echo "=== done in $((SECONDS - started)) s"
