"""Write Chainer 7.8.1 reference values for type_check, distributions, hooks and
the word2vec/deconvolution links.

Run with the reference venv:  /work/venv-chainer/bin/python make_misc_fixture.py [outdir]
Writes into outdir (default: this file's folder):
  misc.json  type_check/*: the messages of InvalidType for a few failing checks,
             and str() of a few expressions
  misc.npz   inputs and Chainer's outputs and gradients (see each section):
             distributions/*  distribution_cases.run_cases on Chainer
             link_hooks/*     link_hook_cases.link_hook_cases on Chainer
             nd/*             nd_cases.run_nd_cases on Chainer
             w2v/*            w2v_cases.run_w2v_cases on Chainer
             special/*        erfinv, erfcinv, ndtri, zeta, polygamma and their gradients
             gaussian/*       F.gaussian after numpy.random.seed(7), and its gradients
             fft/*            F.fft and F.ifft and their gradients
             cov/*            F.cross_covariance and F.decov and their gradients
             spp/*            F.spatial_pyramid_pooling_2d and its gradient
Only Chainer's public API is called.
"""
import json
import os
import sys

import numpy as np
import chainer
from chainer.utils import type_check

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(7812)
texts = {}
arrays = {}


# ----- type_check -----
class Checked(chainer.Function):
    def check_type_forward(self, in_types):
        type_check._argname(in_types, ('x', 'w'))
        x_type, w_type = in_types
        type_check.expect(x_type.dtype.kind == 'f', x_type.dtype == w_type.dtype,
                          x_type.ndim == 2, x_type.shape[1] == w_type.shape[0],
                          x_type.size > 0, x_type.shape[0] * 2 >= w_type.shape[0] + 1)

    def forward(self, inputs):
        return inputs[0].dot(inputs[1]),


CASES = {
    'kind': (np.zeros((2, 3), np.int32), np.zeros((3, 4), np.int32)),
    'dtype': (np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float64)),
    'ndim': (np.zeros((2, 3, 1), np.float32), np.zeros((3, 4), np.float32)),
    'shape': (np.zeros((2, 3), np.float32), np.zeros((5, 4), np.float32)),
    'size': (np.zeros((0, 3), np.float32), np.zeros((3, 4), np.float32)),
    'count': (np.zeros((2, 3), np.float32),),
    'arith': (np.zeros((1, 3), np.float32), np.zeros((3, 4), np.float32)),
    'passes': (np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32)),
}
for name, inputs in CASES.items():
    try:
        Checked()(*inputs)
        texts['type_check/' + name] = None
    except type_check.InvalidType as error:
        texts['type_check/' + name] = str(error)
x, y = type_check.Variable(1, 'x'), type_check.Variable(2, 'y')
for name, expr in {'nested_sub': x - (y - x), 'pow': (x ** y) ** x, 'neg': -(x + y) * y,
                   'slice': x.shape[1:3], 'call': type_check.prod(x.shape),
                   'mixed': 2 * x + y // 3 % x}.items():
    texts['type_check_str/' + name] = str(expr)


# ----- distributions: distribution_cases.py, the same program the tests run -----
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chainer.distributions as D        # noqa: E402
import chainer.functions as F            # noqa: E402
from distribution_cases import run_cases  # noqa: E402
arrays.update(('distributions/' + key, value) for key, value in run_cases(chainer, D, F).items())


# ----- link hooks: SpectralNormalization and WeightStandardization -----
import chainer.links as L                  # noqa: E402
from chainer import link_hooks             # noqa: E402


from link_hook_cases import link_hook_cases   # noqa: E402


arrays.update(('link_hooks/' + key, value) for key, value in link_hook_cases(
    chainer, L, F, link_hooks, np.random.RandomState(7814)).items())


# ----- N-D deconvolution and unpooling: nd_cases.py, the same program the tests run -----
from nd_cases import run_nd_cases          # noqa: E402
arrays.update(('nd/' + key, value) for key, value in run_nd_cases(chainer, F).items())


# ----- word2vec's losses: w2v_cases.py, the same program the tests run -----
from w2v_cases import run_w2v_cases        # noqa: E402
arrays.update(('w2v/' + key, value) for key, value in run_w2v_cases(chainer, F, L).items())


# ----- erfinv, erfcinv, ndtri: values and gradients -----
special = {'erfinv': np.array([-0.999, -0.5, 0, 0.3, 0.9, 0.9999]),
           'erfcinv': np.array([1e-30, 1e-5, 0.2, 1, 1.7, 1.99999]),
           'ndtri': np.array([1e-20, 1e-3, 0.3, 0.5, 0.8, 0.999999]),
           'erfcx': np.array([-5, -0.5, 0, 1.5, 8, 24.9, 25.1, 300])}
for name, x in special.items():
    for dtype in (np.float32, np.float64):
        v = chainer.Variable(x.astype(dtype))
        y = getattr(F, name)(v)
        F.sum(y).backward()
        key = 'special/{}/{}'.format(name, np.dtype(dtype).name)
        arrays.update({key + '/x': v.array, key + '/y': y.array, key + '/gx': v.grad})

for dtype in (np.float32, np.float64):       # zeta(x, q) and polygamma(n, x), with gradients
    key = 'special/zeta/{}'.format(np.dtype(dtype).name)
    q = chainer.Variable(np.array([0.3, 1.0, 2.5, 7.0, 40.0], dtype))
    y = F.zeta(np.array([2.0, 3.5, 1.5, 6.0, 2.0], dtype), q)
    F.sum(y).backward()
    arrays.update({key + '/q': q.array, key + '/y': y.array, key + '/gq': q.grad})
    key = 'special/polygamma/{}'.format(np.dtype(dtype).name)
    x = chainer.Variable(np.array([0.4, 1.0, 3.3, 12.0, -1.5, -0.3], dtype))
    n = np.array([0, 1, 2, 3, 1, 2], np.int32)
    y = F.polygamma(n, x)
    F.sum(y).backward()
    arrays.update({key + '/x': x.array, key + '/n': n, key + '/y': y.array, key + '/gx': x.grad})

# F.gaussian: a seeded draw (the same eps as numpy.random after seed 7) and its gradients
mean = chainer.Variable(rng.randn(2, 3).astype(np.float32))
ln_var = chainer.Variable(rng.randn(2, 3).astype(np.float32))
np.random.seed(7)
y = F.gaussian(mean, ln_var)
y.grad = np.arange(6, dtype=np.float32).reshape(2, 3)
y.backward()
arrays.update({'gaussian/mean': mean.array, 'gaussian/ln_var': ln_var.array, 'gaussian/y': y.array,
               'gaussian/gmean': mean.grad, 'gaussian/gln_var': ln_var.grad})

for method in ('fft', 'ifft'):      # F.fft / F.ifft of (real, imag), and the gradients
    real = chainer.Variable(rng.randn(2, 6).astype(np.float32))
    imag = chainer.Variable(rng.randn(2, 6).astype(np.float32))
    yr, yi = getattr(F, method)((real, imag))
    gr, gi = rng.randn(2, 6).astype(np.float32), rng.randn(2, 6).astype(np.float32)
    F.sum(yr * gr + yi * gi).backward()
    key = 'fft/' + method + '/'
    arrays.update({key + 'real': real.array, key + 'imag': imag.array, key + 'gr': gr,
                   key + 'gi': gi, key + 'yr': yr.array, key + 'yi': yi.array,
                   key + 'greal': real.grad, key + 'gimag': imag.grad})

for reduce in ('half_squared_sum', 'no'):      # cross_covariance and decov, and their gradients
    y = chainer.Variable(rng.randn(5, 3).astype(np.float32))
    z = chainer.Variable(rng.randn(5, 4).astype(np.float32))
    c = F.cross_covariance(y, z, reduce)
    d = F.decov(y, reduce)
    loss = F.sum(c * c) + F.sum(d * d) if reduce == 'no' else c + d
    loss.backward()
    key = 'cov/' + reduce + '/'
    arrays.update({key + 'y': y.array, key + 'z': z.array, key + 'c': c.array, key + 'd': d.array,
                   key + 'gy': y.grad, key + 'gz': z.grad})

x = chainer.Variable(rng.randn(2, 3, 7, 5).astype(np.float32))     # spatial pyramid pooling
y = F.spatial_pyramid_pooling_2d(x, 3, pooling='max')
y.grad = rng.randn(*y.shape).astype(np.float32)
arrays.update({'spp/x': x.array, 'spp/gy': y.grad})
y.backward()
arrays.update({'spp/y': y.array, 'spp/gx': x.grad})


if __name__ == '__main__':
    with open(os.path.join(OUT, 'misc.json'), 'w') as f:
        json.dump(texts, f, indent=1, sort_keys=True)
    np.savez_compressed(os.path.join(OUT, 'misc.npz'), **arrays)
