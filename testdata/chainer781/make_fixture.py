"""Write Chainer 7.8.1 reference files for the convolution chapter.

Run with the reference venv:  /work/venv-chainer/bin/python make_fixture.py [outdir]
Writes into outdir (default: this file's folder):
  conv2d.npz  a Convolution2D(3, 4, ksize=3, stride=2, pad=1) saved by save_npz
  bn.npz      a BatchNormalization(4) after two training batches, saved by save_npz
  cases.npz   inputs, output gradients and Chainer's outputs and gradients:
              conv/*   the conv2d link on x (odd 7x6 image), gy
              pool/*   max_pooling_2d (ksize 3, stride 2, pad 1, cover_all True/False)
                       and average_pooling_2d (ksize 3, stride 2, pad 1)
              im2col/* F.im2col(x, 3, stride=2, pad=1)
              bn/*     the BatchNormalization link: train-mode outputs and gradients of
                       both batches, then test-mode output on a third input
Only Chainer's public API is called.
"""
import os
import sys

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import serializers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(781)
cases = {}


def grads(y, gy, *variables):
    for v in variables:
        v.cleargrad()
    y.grad = gy
    y.backward()
    return [v.grad.copy() for v in variables]


# ----- convolution -----
conv = L.Convolution2D(3, 4, ksize=3, stride=2, pad=1)
conv.W.array[...] = rng.randn(4, 3, 3, 3).astype(np.float32) * 0.3
conv.b.array[...] = rng.randn(4).astype(np.float32)
x = chainer.Variable(rng.randn(2, 3, 7, 6).astype(np.float32))
y = conv(x)
gy = rng.randn(*y.shape).astype(np.float32)
gx, gW, gb = grads(y, gy, x, conv.W, conv.b)
cases.update({'conv/x': x.array, 'conv/y': y.array, 'conv/gy': gy, 'conv/gx': gx,
              'conv/gW': gW, 'conv/gb': gb})
serializers.save_npz(os.path.join(OUT, 'conv2d.npz'), conv)

# ----- pooling and im2col -----
x = chainer.Variable(rng.randn(2, 3, 7, 6).astype(np.float32))
cases['pool/x'] = x.array
for name, f in (('max_cover', lambda v: F.max_pooling_2d(v, 3, 2, 1, cover_all=True)),
                ('max_nocover', lambda v: F.max_pooling_2d(v, 3, 2, 1, cover_all=False)),
                ('avg', lambda v: F.average_pooling_2d(v, 3, 2, 1)),
                ('im2col', lambda v: F.im2col(v, 3, stride=2, pad=1))):
    y = f(x)
    gy = rng.randn(*y.shape).astype(np.float32)
    gx, = grads(y, gy, x)
    cases.update({'pool/{}/y'.format(name): y.array, 'pool/{}/gy'.format(name): gy,
                  'pool/{}/gx'.format(name): gx})

# ----- batch normalization -----
bn = L.BatchNormalization(4)
bn.gamma.array[...] = 1 + rng.randn(4).astype(np.float32) * 0.1
bn.beta.array[...] = rng.randn(4).astype(np.float32) * 0.1
cases['bn/gamma0'] = bn.gamma.array.copy()
cases['bn/beta0'] = bn.beta.array.copy()
for step in range(2):
    x = chainer.Variable((rng.randn(3, 4, 5, 3) * 2 + 1).astype(np.float32))
    with chainer.using_config('train', True):
        y = bn(x)
    gy = rng.randn(*y.shape).astype(np.float32)
    gx, ggamma, gbeta = grads(y, gy, x, bn.gamma, bn.beta)
    for key, value in (('x', x.array), ('y', y.array), ('gy', gy), ('gx', gx),
                       ('ggamma', ggamma), ('gbeta', gbeta),
                       ('avg_mean', bn.avg_mean.copy()), ('avg_var', bn.avg_var.copy())):
        cases['bn/{}/{}'.format(step, key)] = value
serializers.save_npz(os.path.join(OUT, 'bn.npz'), bn)
x = (rng.randn(3, 4, 5, 3) * 2 + 1).astype(np.float32)
with chainer.using_config('train', False):
    cases['bn/test/x'] = x
    cases['bn/test/y'] = bn(x).array

np.savez_compressed(os.path.join(OUT, 'cases.npz'), chainer_version=np.array(chainer.__version__),
                    **cases)
print('wrote', sorted(os.listdir(OUT)))
