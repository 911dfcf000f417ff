"""Write Chainer 7.8.1's answers to the TabularDataset cases.

Run with the reference venv:  /work/venv-chainer/bin/python make_tabular_fixture.py [outdir]
Writes tabular.json into outdir (default: this file's folder): {case name:
value} from tabular_cases.run_tabular_cases on chainer.dataset and
chainer.dataset.tabular (see that file).  Only Chainer's public API is called.
"""
import json
import os
import sys

import chainer.dataset
from chainer.dataset import tabular

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tabular_cases  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else HERE
cases = tabular_cases.run_tabular_cases(chainer.dataset, tabular)
with open(os.path.join(OUT, 'tabular.json'), 'w') as f:
    json.dump({'chainer': chainer.__version__, 'cases': cases}, f, indent=0, sort_keys=True)
print(len(cases), 'cases')
