"""Write Chainer 7.8.1 reference files for L.InceptionBN.

Run with the reference venv:  /work/venv-chainer/bin/python make_inceptionbn_fixture.py [outdir]
Writes into outdir (default: this file's folder):
  inceptionbn_a.npz / inceptionbn_b.npz  the links, saved by save_npz after one training batch:
      a: InceptionBN(3, 2, 2, 3, 2, 3, 'max', proj_pool=2)           (stride 1, all four branches)
      b: InceptionBN(3, 0, 2, 3, 2, 2, 'avg', stride=2)               (no 1x1 branch, no projection)
  inceptionbn_cases.npz  for each of a, b: x, gy, the training-mode output y and gradient gx of
      that batch (from the link's initial weights, written in params/<name>/... before it), and the
      test-mode output y_test on x2 after the batch
Only Chainer's public API is called.
"""
import os
import sys

import numpy as np
import chainer
import chainer.links as L
from chainer import serializers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(7811)
cases = {}
links = {'a': L.InceptionBN(3, 2, 2, 3, 2, 3, 'max', proj_pool=2),
         'b': L.InceptionBN(3, 0, 2, 3, 2, 2, 'avg', stride=2)}
for key, link in links.items():
    for name, param in sorted(link.namedparams()):
        param.array[...] = rng.randn(*param.shape).astype(np.float32) * 0.5 + (
            1.0 if name.endswith('gamma') else 0.0)
        cases[key + '/params' + name] = param.array.copy()
    x = rng.randn(2, 3, 5, 6).astype(np.float32)
    xv = chainer.Variable(x)
    with chainer.using_config('train', True):
        y = link(xv)
    gy = rng.randn(*y.shape).astype(np.float32)
    y.grad = gy
    y.backward()
    x2 = rng.randn(2, 3, 5, 6).astype(np.float32)
    with chainer.using_config('train', False):
        y_test = link(x2).array
    cases.update({key + '/x': x, key + '/gy': gy, key + '/y': y.array, key + '/gx': xv.grad,
                  key + '/x2': x2, key + '/y_test': y_test})
    serializers.save_npz(os.path.join(OUT, 'inceptionbn_%s.npz' % key), link)
np.savez(os.path.join(OUT, 'inceptionbn_cases.npz'), **cases)
print('wrote', OUT)
