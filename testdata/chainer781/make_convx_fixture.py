"""Write Chainer 7.8.1 reference values for spatial transformers, deformable
and local convolution.

Run with the reference venv:  /work/venv-chainer/bin/python make_convx_fixture.py [outdir]
Writes convx.npz into outdir (default: this file's folder):
  cases/*          convx_cases.run_convx_cases on Chainer (inputs, outputs, gradients)
  deform_link/*    a DeformableConvolution2D(3, 4, (3, 2), stride=2, pad=1) with random
                   parameters: params/<its npz keys> as Chainer's save_npz writes them,
                   x, gy, and Chainer's y and gx
  local_link/*     the same for LocalConvolution2D(3, 4, in_size=(6, 7), ksize=3)
  local_link_stride2/W_shape  the W shape Chainer's LocalConvolution2D(3, 4, in_size=(6, 7),
                   ksize=3, stride=2) makes (it ignores the stride)
Only Chainer's public API is called.
"""
import io
import os
import sys

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else HERE
sys.path.insert(0, HERE)
from convx_cases import run_convx_cases    # noqa: E402

arrays = {'cases/' + key: value for key, value in run_convx_cases(chainer, F).items()}
rng = np.random.RandomState(7817)


def record(prefix, link, x_shape):
    """link's saved parameters, and its output and input gradient on a random x."""
    x = chainer.Variable(rng.uniform(-1, 1, x_shape).astype(np.float32))
    y = link(x)
    gy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    y.grad = gy
    y.backward()
    saved = io.BytesIO()
    chainer.serializers.save_npz(saved, link)
    saved.seek(0)
    with np.load(saved) as params:
        arrays.update((prefix + '/params/' + key, params[key]) for key in params.files)
    arrays.update({prefix + '/x': x.array, prefix + '/gy': gy, prefix + '/y': y.array,
                   prefix + '/gx': x.grad})


record('deform_link', L.DeformableConvolution2D(
    3, 4, (3, 2), stride=2, pad=1, offset_initialW=initializers.Normal(0.5),
    offset_initial_bias=initializers.Normal(0.5), deform_initialW=initializers.Normal(1.0),
    deform_initial_bias=initializers.Normal(1.0)), (2, 3, 5, 6))
record('local_link', L.LocalConvolution2D(3, 4, in_size=(6, 7), ksize=3,
                                          initial_bias=initializers.Normal(1.0)), (2, 3, 6, 7))
arrays['local_link_stride2/W_shape'] = np.array(
    L.LocalConvolution2D(3, 4, in_size=(6, 7), ksize=3, stride=2).W.shape)

np.savez_compressed(os.path.join(OUT, 'convx.npz'), **arrays)
print('wrote', os.path.join(OUT, 'convx.npz'), len(arrays), 'arrays')
