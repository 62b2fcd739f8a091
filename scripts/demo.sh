#!/usr/bin/env bash
# The main job (`make demo`): run the quickstart study (Synthetic(1,1): FedAvg vs FedProx vs
# centralised; generated data, no download) and write its report; when MNIST is in the data
# directory, also run the MNIST FL-vs-centralised comparison (2NN) and write its report.
# Prints the path of each report; the last line of output is the quickstart report's path.
#
# Output goes to $DEMO_OUT (default runs/demo), which is recreated on every run so the reports
# show exactly this demo's runs. One torch thread per run (the runs' own `run.threads`).
# $DEMO_ARGS is appended to every `fedkit run` (e.g. DEMO_ARGS="--set run.rounds=2" for a smoke
# test of this script).
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

step() {  # step NAME EXAMPLE [--set ...]: run one study and report it
  local name="$1" file="$2"
  shift 2
  local t0
  t0=$(date +%s)
  echo "==> $name: fedkit run $file $*"
  # shellcheck disable=SC2086  # DEMO_ARGS is a list of words
  "$FEDKIT" run "$file" --out "$OUT/$name" "$@" ${DEMO_ARGS:-}
  "$FEDKIT" report "$OUT/$name" --out "$OUT/$name-report" >"$OUT/$name-report.path"
  echo "==> $name: done in $(( $(date +%s) - t0 )) s; report: $(cat "$OUT/$name-report.path")"
}

step quickstart examples/quickstart.toml

mnist_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
             t10k-labels-idx1-ubyte.gz)
have_mnist=1
for f in "${mnist_files[@]}"; do
  [ -f "$DATA/mnist/$f" ] || have_mnist=0
done
if [ "$have_mnist" = 1 ]; then
  step mnist examples/mnist_fl_vs_central.toml
else
  echo "==> MNIST not found in $DATA/mnist (set FEDKIT_DATA); skipping the MNIST comparison"
fi

echo
echo "demo finished in $(( $(date +%s) - start )) s"
if [ "$have_mnist" = 1 ]; then
  echo "MNIST FL vs centralised report: $(cat "$OUT/mnist-report.path")"
fi
echo "Quickstart report (open in a browser; Markdown and PNGs beside it):"
cat "$OUT/quickstart-report.path"
