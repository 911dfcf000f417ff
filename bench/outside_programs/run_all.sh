#!/bin/bash
# Runs public Chainer programs by other people (listed with commits in programs.py), each with only
# its imports changed, on small data (nothing is downloaded), under Chainer 7.8.1 and onefchainer:
#
#   # once: a git copy of each repository in programs.py, as $OUTSIDE_MIRRORS/<owner>+<name>/repo
#   for r in $(python3 -c "import programs; print(' '.join(sorted({p['repo'] for p in programs.PROGRAMS})))"); do
#     git clone --bare https://github.com/$r $OUTSIDE_MIRRORS/${r/\//+}/repo; done
#   OUTSIDE_MIRRORS=... bash bench/outside_programs/run_all.sh CHAINER_VENV_PYTHON [name...]
#
# CHAINER_VENV_PYTHON: an interpreter with Chainer 7.8.1 (numpy<2).  The programs run three times:
# as written under it; with onefchainer under python3 (NumPy 2); with onefchainer under the venv's
# interpreter (NumPy 1.26).  name...: run only programs whose name holds one of them.
# Needs numpy, Pillow (and scipy for chainer-gan-lib).  Work files and results-*.tsv / results.md go
# to $OUTSIDE_WORK (/tmp/onefchainer-outside).  PROGRAM_TIMEOUT: seconds per program (180).
set -e
H=$(cd "$(dirname "$0")" && pwd)
export OUTSIDE_WORK=${OUTSIDE_WORK:-/tmp/onefchainer-outside}
CPY=${1:?give the Python interpreter that has Chainer 7.8.1}; shift
: "${OUTSIDE_MIRRORS:?set OUTSIDE_MIRRORS to the folder of the repositories git copies}"
[ -d "$OUTSIDE_WORK/data/facade" ] || python3 "$H/make_data.py"
python3 "$H/harness.py" chainer "$CPY" "$@"
python3 "$H/harness.py" onef python3 "$@"
python3 "$H/harness.py" onef-np126 "$CPY" "$@"
python3 "$H/report.py"
