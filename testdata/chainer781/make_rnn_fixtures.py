"""Write Chainer 7.8.1 reference files for the recurrent-networks chapter.

Run with the reference venv:  /work/venv-chainer/bin/python make_rnn_fixtures.py [outdir]
Writes rnn.npz into outdir (default: this file's folder).  For each link
(lstm: L.LSTM(3, 4) over three steps whose batch shrinks 3, 3, 2;
nstep_lstm: L.NStepLSTM(2, 3, 4, 0.0); nstep_bigru: L.NStepBiGRU(2, 3, 4, 0.0);
gru: L.GRU(3, 4) over three steps) it stores, under '<name>/':
  params/<path>  the link's parameters as save_npz writes them (npz keys)
  in/...         the inputs; out/...  the outputs;  grad/...  the gradients of
                 loss = sum of (output * its fixed random weight) w.r.t. the
                 inputs and parameters, all float64.
Only Chainer's public API is called.  (Chainer 7.8.1 imports numpy.distutils
and pkg_resources to check its environment; newer setuptools lack them, so
that check is replaced by a no-op before the import.)
"""
import io
import os
import sys
import types

import numpy as np

_check = types.ModuleType('chainer._environment_check')
_check.check = lambda: None
sys.modules['chainer._environment_check'] = _check
import chainer                  # noqa: E402
import chainer.functions as F   # noqa: E402
import chainer.links as L       # noqa: E402
from chainer import serializers  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(18)
cases = {}


def params_of(name, link):
    buf = io.BytesIO()
    serializers.save_npz(buf, link)
    buf.seek(0)
    with np.load(buf) as saved:
        for key in saved.files:
            cases['{}/params/{}'.format(name, key)] = saved[key]


def weighted_loss(name, outputs):
    loss = 0
    for key, y in outputs:
        w = rng.uniform(-1, 1, y.shape)
        cases['{}/weight/{}'.format(name, key)] = w
        cases['{}/out/{}'.format(name, key)] = y.array
        loss = loss + F.sum(y * w)
    return loss


def grads_of(name, link, inputs):
    for path, p in link.namedparams():
        cases['{}/grad/param{}'.format(name, path)] = p.grad
    for key, v in inputs:
        cases['{}/grad/{}'.format(name, key)] = v.grad


def randomize(link):
    for p in link.params():
        p.array[...] = rng.uniform(-0.8, 0.8, p.shape)


# ----- L.LSTM: three steps, the last with a smaller batch -----
link = L.LSTM(3, 4)
link.to_cpu()
for p in link.params():
    p.array = p.array.astype(np.float64)
randomize(link)
params_of('lstm', link)
xs = [chainer.Variable(rng.randn(b, 3)) for b in (3, 3, 2)]
ys = []
for t, x in enumerate(xs):
    cases['lstm/in/x{}'.format(t)] = x.array
    ys.append(('y{}'.format(t), link(x)))
ys += [('c', link.c), ('h', link.h)]
link.cleargrads()
weighted_loss('lstm', ys).backward()
grads_of('lstm', link, [('x{}'.format(t), x) for t, x in enumerate(xs)])

# ----- L.NStepLSTM and L.NStepBiGRU over sequences of lengths 2, 4, 1 -----
for name, make, has_c in (('nstep_lstm', lambda: L.NStepLSTM(2, 3, 4, 0.0), True),
                          ('nstep_bigru', lambda: L.NStepBiGRU(2, 3, 4, 0.0), False)):
    link = make()
    for p in link.params():
        p.array = p.array.astype(np.float64)
    randomize(link)
    params_of(name, link)
    directions = 2 if 'bi' in name else 1
    xs = [chainer.Variable(rng.randn(n, 3)) for n in (2, 4, 1)]
    hx = chainer.Variable(rng.randn(2 * directions, 3, 4))
    cx = chainer.Variable(rng.randn(2 * directions, 3, 4))
    for j, x in enumerate(xs):
        cases['{}/in/x{}'.format(name, j)] = x.array
    cases[name + '/in/hx'] = hx.array
    inputs = [('hx', hx)] + [('x{}'.format(j), x) for j, x in enumerate(xs)]
    if has_c:
        cases[name + '/in/cx'] = cx.array
        hy, cy, ys = link(hx, cx, xs)
        outs = [('hy', hy), ('cy', cy)]
        inputs.append(('cx', cx))
    else:
        hy, ys = link(hx, xs)
        outs = [('hy', hy)]
    outs += [('y{}'.format(j), y) for j, y in enumerate(ys)]
    link.cleargrads()
    weighted_loss(name, outs).backward()
    grads_of(name, link, inputs)

# ----- L.GRU (stateful): three steps -----
link = L.GRU(3, 4)
for p in link.params():
    p.array = p.array.astype(np.float64)
randomize(link)
params_of('gru', link)
xs = [chainer.Variable(rng.randn(2, 3)) for _ in range(3)]
ys = []
for t, x in enumerate(xs):
    cases['gru/in/x{}'.format(t)] = x.array
    ys.append(('y{}'.format(t), link(x)))
link.cleargrads()
weighted_loss('gru', ys).backward()
grads_of('gru', link, [('x{}'.format(t), x) for t, x in enumerate(xs)])

np.savez_compressed(os.path.join(OUT, 'rnn.npz'), **cases)
print('wrote', os.path.join(OUT, 'rnn.npz'), len(cases), 'arrays')
