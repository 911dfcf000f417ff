#!/bin/bash
# Runs Chainer v7.8.1's examples, each with only its imports changed, on small data in the
# official formats (nothing is downloaded), and writes a table of which run:
#
#   git clone https://github.com/chainer/chainer -b v7.8.1 ~/chainer      # once
#   CHAINER_SRC=~/chainer ONEFCHAINER_DATASET_ROOT=~/datasets bash bench/chainer_examples/run_all.sh [python] [name...]
#
# python: the interpreter (default python3).  If it imports chainer (a venv with Chainer 7.8.1,
# numpy<2), the programs run as written under real Chainer; otherwise with their imports rewritten
# to this repository's onefchainer.  name...: run only programs whose name holds one of them.
# Needs numpy and Pillow; MNIST's official files under $ONEFCHAINER_DATASET_ROOT/mnist.
# Work files and results-<variant>.tsv / results.md go to $EXAMPLES_WORK (/tmp/onefchainer-examples).
# EXAMPLE_TIMEOUT: seconds per program (120).  About 2.5 minutes for all 53 on 2 cores.
set -e
H=$(cd "$(dirname "$0")" && pwd)
export EXAMPLES_WORK=${EXAMPLES_WORK:-/tmp/onefchainer-examples}
PY=${1:-python3}; shift || true
: "${CHAINER_SRC:?set CHAINER_SRC to a git checkout of Chainer (v7.8.1)}"
: "${ONEFCHAINER_DATASET_ROOT:?set ONEFCHAINER_DATASET_ROOT (MNIST under it)}"
[ -d "$EXAMPLES_WORK/src/examples" ] || { mkdir -p "$EXAMPLES_WORK/src"
  git -C "$CHAINER_SRC" archive "${CHAINER_REV:-HEAD}" examples | tar -x -C "$EXAMPLES_WORK/src"; }
[ -f "$EXAMPLES_WORK/data/chainer_root/pfnet/chainer/mnist/test.npz" ] || python3 "$H/make_data.py"
if PYTHONPATH= "$PY" -c "import chainer" 2>/dev/null; then V=chainer; else V=onef; fi
python3 "$H/harness.py" "$V" "$PY" "$@"
python3 "$H/report.py" || true
