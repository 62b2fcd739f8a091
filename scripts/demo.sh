#!/usr/bin/env bash
# The main job (`make demo`): run the quickstart study (Synthetic(1,1): FedAvg vs FedProx vs
# centralised; generated data, no download) and write its report; when MNIST is in the data
# directory, also run the MNIST FL-vs-centralised comparison (2NN) and write its report.
# Prints the path of each report; the last line of output is the quickstart report's path.
#
# The quickstart runs first and alone, so its time is not shared with anything else of ours; the
# MNIST study follows. Each run uses one torch thread (`run.threads`), so with DEMO_PARALLEL=1 on
# a machine with 2 or more cores the MNIST study runs in the background beside the quickstart
# instead (its output in $DEMO_OUT/mnist.log): faster on an idle machine, slower quickstart on a
# busy one (measured on a busy 2-core machine: quickstart 90 s alone, 140 s beside MNIST).
# Output goes to $DEMO_OUT (default runs/demo), which is recreated on every run so the reports
# show exactly this demo's runs. $DEMO_ARGS is appended to every `fedkit run` (e.g.
# DEMO_ARGS="--set run.rounds=2" for a smoke test of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
FEDKIT="$VENV/bin/fedkit"
OUT="${DEMO_OUT:-runs/demo}"
DATA="${FEDKIT_DATA:-$HOME/.cache/fedkit}"
export FEDKIT_DATA="$DATA"

rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)

step() {  # step NAME EXAMPLE: run one study and write its report
  local name="$1" file="$2" t0
  t0=$(date +%s)
  echo "==> $name: fedkit run $file ${DEMO_ARGS:-}"
  # shellcheck disable=SC2086  # DEMO_ARGS is a list of words
  # (explicit returns: `set -e` does not apply inside a function called from an `if`)
  "$FEDKIT" run "$file" --out "$OUT/$name" ${DEMO_ARGS:-} || return 1
  "$FEDKIT" report "$OUT/$name" --out "$OUT/$name-report" >"$OUT/$name-report.path" || return 1
  echo "==> $name: done in $(( $(date +%s) - t0 )) s; report: $(cat "$OUT/$name-report.path")"
}

have_mnist=1
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
         t10k-labels-idx1-ubyte.gz; do
  [ -f "$DATA/mnist/$f" ] || have_mnist=0
done
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
mnist_pid=""
if [ "$have_mnist" = 1 ]; then
  if [ "${DEMO_PARALLEL:-0}" = 1 ] && [ "$cores" -ge 2 ]; then
    echo "==> mnist: running in the background beside the quickstart (log: $OUT/mnist.log)"
    step mnist examples/mnist_fl_vs_central.toml >"$OUT/mnist.log" 2>&1 &
    mnist_pid=$!
  fi
else
  echo "==> MNIST not found in $DATA/mnist (set FEDKIT_DATA); skipping the MNIST comparison"
fi

if ! step quickstart examples/quickstart.toml; then
  [ -z "$mnist_pid" ] || wait "$mnist_pid" || true
  echo "demo: the quickstart study failed" >&2
  exit 1
fi

if [ "$have_mnist" = 1 ]; then
  if [ -n "$mnist_pid" ]; then
    echo "==> mnist: waiting for the background study"
    if ! wait "$mnist_pid"; then
      cat "$OUT/mnist.log" >&2
      echo "demo: the MNIST study failed (log above: $OUT/mnist.log)" >&2
      exit 1
    fi
    grep '^==> mnist: done' "$OUT/mnist.log"
  else
    step mnist examples/mnist_fl_vs_central.toml
  fi
fi

echo
echo "demo finished in $(( $(date +%s) - start )) s"
if [ "$have_mnist" = 1 ]; then
  echo "MNIST FL vs centralised report: $(cat "$OUT/mnist-report.path")"
fi
echo "Quickstart report (open in a browser; Markdown and PNGs beside it):"
cat "$OUT/quickstart-report.path"
