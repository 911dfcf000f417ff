"""Write Chainer 7.8.1 reference values for as_strided, black_out (function and
link), decorrelated batch normalization (functions and link), the
discriminative clustering loss, sparse_matmul with CooMatrix / to_coo /
get_order, and the up/downsampling filter initializers.

Run with the reference venv:  /work/venv-chainer/bin/python make_lossnorm_fixture.py [outdir]
Writes lossnorm.npz into outdir (default: this file's folder); every key is
'<section>/<name>', inputs and Chainer's outputs and gradients side by side:
  strided/*   F.as_strided of a few (shape, strides, offset) cases and x's gradient
  blackout/*  F.black_out (reduce 'mean' and 'no') with fixed samples, gradients;
              L.BlackOut with given W and sample_data, its loss, W's gradient, npz keys
  dbn/*       F.decorrelated_batch_normalization: y, gx, the running statistics;
              F.fixed_decorrelated_batch_normalization: y, gx;
              L.DecorrelatedBatchNormalization: statistics after training calls,
              its test-mode output and its npz keys
  disc/*      the three terms of F.discriminative_margin_based_clustering_loss
              (norm 1 and 2) and the gradient of their sum
  sparse/*    to_coo's arrays, get_order, sparse_matmul (sparse left or right,
              batched or not, transposed or not) and its gradients
  filters/*   UpsamplingDeconvFilter and DownsamplingConvFilter on a few shapes
Only Chainer's public API is called.
"""
import io
import os
import sys

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers, utils

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(7818)
arrays = {}


def grads(loss_of, *inputs):
    """The outputs of loss_of on Variables of inputs, and the inputs' gradients
    for an upstream gradient of ones times a fixed random array (stored)."""
    variables = [chainer.Variable(a.copy()) for a in inputs]
    y = loss_of(*variables)
    gy = np.asarray(rng.randn(*y.shape))
    y.grad = gy.astype(y.dtype)
    y.backward()
    return y.array, gy, [v.grad for v in variables]


def keys_of(link):
    buffer = io.BytesIO()
    chainer.serializers.save_npz(buffer, link)
    buffer.seek(0)
    with np.load(buffer) as saved:
        return np.array(sorted(saved.files))


# ----- as_strided -----
cases = [((6,), (3, 2), (1, 1), 0), ((3, 4), (2, 2, 2), (4, 1, 1), 1),
         ((8,), (3,), (-2,), 5), ((2, 3), (2, 3), (1, 2), None), ((5,), (2, 3), (0, 1), 1)]
for i, (in_shape, shape, strides, offset) in enumerate(cases):
    x = rng.randn(*in_shape)
    y, gy, (gx,) = grads(lambda v: F.as_strided(v, shape, strides, offset), x)
    arrays.update({'strided/{}/x'.format(i): x, 'strided/{}/y'.format(i): y,
                   'strided/{}/gy'.format(i): gy, 'strided/{}/gx'.format(i): gx})

# ----- black_out -----
x = rng.randn(4, 3)
W = rng.randn(7, 3)
t = np.array([1, 0, 6, 3], np.int32)
samples = rng.randint(0, 7, (4, 5)).astype(np.int32)
arrays.update({'blackout/x': x, 'blackout/W': W, 'blackout/t': t, 'blackout/samples': samples})
for reduce in ('mean', 'no'):
    y, gy, (gx, gW) = grads(lambda a, b: F.black_out(a, t, b, samples, reduce=reduce), x, W)
    arrays.update({'blackout/{}/y'.format(reduce): y, 'blackout/{}/gy'.format(reduce): gy,
                   'blackout/{}/gx'.format(reduce): gx, 'blackout/{}/gW'.format(reduce): gW})
link = L.BlackOut(3, [5, 1, 2, 4, 3, 2, 1], 5)
link.W.array[...] = W.astype(np.float32)
link.sample_data = samples
loss = link(x.astype(np.float32), t)
link.cleargrads()                                 # W.grad starts as NaN in Chainer
loss.backward()
arrays.update({'blackout/link/loss': loss.array, 'blackout/link/gW': link.W.grad,
               'blackout/link/keys': keys_of(link)})

# ----- decorrelated batch normalization -----
x = rng.randn(5, 6, 2, 3)
mean, projection = np.zeros((2, 3)), np.tile(np.eye(3), (2, 1, 1))
y, gy, (gx,) = grads(lambda v: F.decorrelated_batch_normalization(
    v, groups=2, eps=1e-3, running_mean=mean, running_projection=projection, decay=0.8), x)
arrays.update({'dbn/x': x, 'dbn/y': y, 'dbn/gy': gy, 'dbn/gx': gx,
               'dbn/running_mean': mean, 'dbn/running_projection': projection})
x2 = rng.randn(7, 4)
y, gy, (gx,) = grads(lambda v: F.decorrelated_batch_normalization(v, groups=1), x2)
arrays.update({'dbn/x2': x2, 'dbn/y2': y, 'dbn/gy2': gy, 'dbn/gx2': gx})
mean, projection = rng.randn(2, 3), rng.randn(2, 3, 3)
y, gy, (gx,) = grads(lambda v: F.fixed_decorrelated_batch_normalization(
    v, mean, projection, groups=2), x)
arrays.update({'dbn/fixed/mean': mean, 'dbn/fixed/projection': projection,
               'dbn/fixed/y': y, 'dbn/fixed/gy': gy, 'dbn/fixed/gx': gx})
link = L.DecorrelatedBatchNormalization(6, groups=3)
xf = x.astype(np.float32)
link(xf)
link(xf * 2 + 1)
link(xf[:3], finetune=True)
with chainer.using_config('train', False):
    y = link(xf).array
arrays.update({'dbn/link/avg_mean': link.avg_mean, 'dbn/link/avg_projection':
               link.avg_projection, 'dbn/link/N': np.array(link.N), 'dbn/link/y': y,
               'dbn/link/keys': keys_of(link)})

# ----- discriminative margin-based clustering loss -----
# (Chainer broadcasts the embeddings against the K masks by their batch axis,
# so it runs only for a batch of 1 or of K images: 3 here.)
emb = rng.randn(3, 3, 4, 5)
labels = rng.randint(0, 4, (3, 4, 5)).astype(np.int32)
labels[1][labels[1] == 2] = 0                     # instance 2 absent from image 1
arrays.update({'disc/emb': emb, 'disc/labels': labels})
for norm in (1, 2):
    v = chainer.Variable(emb.copy())
    terms = F.discriminative_margin_based_clustering_loss(
        v, labels, 0.5, 1.5, 3, norm=norm, alpha=1.0, beta=0.7, gamma=0.01)
    (terms[0] + terms[1] + terms[2]).backward()
    arrays.update({'disc/{}/terms'.format(norm): np.array([float(t.array) for t in terms]),
                   'disc/{}/gx'.format(norm): v.grad})

# ----- sparse_matmul -----
A = rng.randn(3, 4) * (rng.rand(3, 4) < 0.5)
A[0, 1] = 1.5                                     # at least one entry
A3 = rng.randn(2, 3, 4) * (rng.rand(2, 3, 4) < 0.5)
A3[:, 2, 3] = 0.7
arrays.update({'sparse/A': A, 'sparse/A3': A3})
for name, dense in (('2', A), ('3', A3)):
    coo = utils.to_coo(dense, ldnz=9 if name == '2' else None)
    arrays.update({'sparse/{}/data'.format(name): coo.data.array,
                   'sparse/{}/row'.format(name): coo.row, 'sparse/{}/col'.format(name): coo.col,
                   'sparse/{}/order'.format(name): np.array(coo.order),
                   'sparse/{}/dense'.format(name): coo.to_dense()})
arrays['sparse/order_F'] = np.array(utils.get_order(np.array([0, 2, 1]), np.array([0, 0, 1])))
arrays['sparse/order_other'] = np.array(utils.get_order(np.array([1, 0, 1]),
                                                        np.array([0, 1, 1])))
k = 0
for dense, batch in ((A, ()), (A3, (2,))):
    for left in (True, False):
        for transa in (False, True):
            for transb in (False, True):
                m, n = dense.shape[-2:]
                if left:        # op(A) @ op(B): op(A) is (m, n) or (n, m)
                    inner = n if not transa else m
                    other = rng.randn(*(batch + ((inner, 2) if not transb else (2, inner))))
                else:           # op(D) @ op(A)
                    inner = m if not transb else n
                    other = rng.randn(*(batch + ((2, inner) if not transa else (inner, 2))))
                coo = utils.to_coo(dense, requires_grad=True)
                D = chainer.Variable(other.copy())
                y = (F.sparse_matmul(coo, D, transa, transb) if left
                     else F.sparse_matmul(D, coo, transa, transb))
                gy = np.asarray(rng.randn(*y.shape))
                y.grad = gy
                y.backward()
                arrays.update({'sparse/case{}/dense'.format(k): other,
                               'sparse/case{}/flags'.format(k): np.array(
                                   [len(batch), left, transa, transb]),
                               'sparse/case{}/y'.format(k): y.array,
                               'sparse/case{}/gy'.format(k): gy,
                               'sparse/case{}/gdata'.format(k): coo.data.grad,
                               'sparse/case{}/gdense'.format(k): D.grad})
                k += 1

# ----- up/downsampling filters -----
for i, shape in enumerate([(3, 3, 4, 4), (2, 1, 3, 3), (2, 2, 3, 3, 3), (1, 1, 5)]):
    for name, init in (('up', initializers.UpsamplingDeconvFilter()),
                       ('down', initializers.DownsamplingConvFilter())):
        array = np.full(shape, 9.0)
        init(array)
        arrays['filters/{}/{}'.format(i, name)] = array

np.savez_compressed(os.path.join(OUT, 'lossnorm.npz'), **arrays)
print('wrote', len(arrays), 'arrays')
