"""Write Chainer 7.8.1 reference files for the recurrent section "structured
outputs and other cells" (CRF, CTC, zoneout, MGU, peephole and zoneout LSTMs,
tree LSTMs).

Run with the reference venv:  /work/venv-chainer/bin/python make_rnn_fixture.py [outdir]
Writes into outdir (default: this file's folder):
  rnn_links.npz  one Chain holding every link below (children mgu, peephole,
                 zoneout, childsum, nary, crf), saved by save_npz: its keys are
                 Chainer's, and loading it gives the parameters the cases used
  rnn_cases.npz  float64 inputs, output gradients and Chainer's outputs and
                 gradients:
    crf/*       F.crf1d (reduce 'no' and 'mean') and F.argmax_crf1d on a batch
                whose size shrinks (4, 4, 3, 1 rows); gradients for output gradient gy
    crflink/*   L.CRF1d with transpose=True on sequences of lengths 2, 4, 3, 4
    ctc/*       F.connectionist_temporal_classification with input and label
                lengths, a repeated label, an empty label, blank 0 and blank 4
    zoneout/*   F.zoneout after numpy.random.seed(7)
    tree/*      F.tree_lstm with three cells
    <link>/*    each link's outputs over three steps (tree links: one call
                with children, one with None children), and the gradients of
                sum(out * gy) for its inputs and parameters
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
chainer.config.dtype = np.dtype(np.float64)
rng = np.random.RandomState(18)
cases = {}


def randn(*shape):
    return rng.randn(*shape)


def backward(ys, gys):
    loss = sum(F.sum(y * gy) for y, gy in zip(ys, gys))
    loss.backward()


# ----- CRF -----
K = 4
cost = chainer.Variable(randn(K, K))
batches = (4, 4, 3, 1)
xs = [chainer.Variable(randn(b, K)) for b in batches]
ys = [rng.randint(0, K, b).astype(np.int32) for b in batches]
cases['crf/cost'] = cost.array
for t, (x, y) in enumerate(zip(xs, ys)):
    cases['crf/x{}'.format(t)], cases['crf/y{}'.format(t)] = x.array, y
loss = F.crf1d(cost, xs, ys, reduce='no')
gy = randn(4)
backward([loss], [gy])
cases.update({'crf/loss_no': loss.array, 'crf/gy': gy, 'crf/gcost': cost.grad})
for t, x in enumerate(xs):
    cases['crf/gx{}'.format(t)] = x.grad
    x.cleargrad()
cost.cleargrad()
loss = F.crf1d(cost, xs, ys)
loss.backward()
cases.update({'crf/loss_mean': loss.array, 'crf/mean_gcost': cost.grad,
              'crf/mean_gx1': xs[1].grad})
for v in [cost] + xs:
    v.cleargrad()
score, path = F.argmax_crf1d(cost, xs)
gy = randn(4)
backward([score], [gy])
cases.update({'crf/score': score.array, 'crf/score_gy': gy, 'crf/score_gcost': cost.grad})
for t, (p, x) in enumerate(zip(path, xs)):
    cases['crf/path{}'.format(t)], cases['crf/score_gx{}'.format(t)] = p, x.grad

# ----- every link, in one Chain saved by save_npz -----
links = chainer.Chain()
with links.init_scope():
    links.mgu = L.StatefulMGU(3, 4)
    links.peephole = L.StatefulPeepholeLSTM(3, 4)
    links.zoneout = L.StatefulZoneoutLSTM(3, 4, c_ratio=0.3, h_ratio=0.6)
    links.childsum = L.ChildSumTreeLSTM(3, 2)
    links.nary = L.NaryTreeLSTM(3, 2, n_ary=3)
    links.crf = L.CRF1d(K)
for name, param in sorted(links.namedparams()):
    param.array = randn(*param.shape) * 0.5
serializers.save_npz(os.path.join(OUT, 'rnn_links.npz'), links)
links.cleargrads()        # Chainer starts a parameter's grad as NaN

# CRF1d with transpose=True: sequences in any order, ties in length
seqs = [chainer.Variable(randn(n, K)) for n in (2, 4, 3, 4)]
labels = [rng.randint(0, K, len(s)).astype(np.int32) for s in seqs]
loss = links.crf(seqs, labels, reduce='no', transpose=True)
gy = randn(4)
backward([loss], [gy])
cases.update({'crflink/loss': loss.array, 'crflink/gy': gy, 'crflink/gcost': links.crf.cost.grad})
score, path = links.crf.argmax(seqs, transpose=True)
cases['crflink/score'] = score.array
for i, (s, y, p) in enumerate(zip(seqs, labels, path)):
    cases.update({'crflink/x{}'.format(i): s.array, 'crflink/y{}'.format(i): y,
                  'crflink/gx{}'.format(i): s.grad, 'crflink/path{}'.format(i): p})

# the stateful cells: three steps, batch 2
for name in ('mgu', 'peephole', 'zoneout'):
    link = getattr(links, name)
    inputs = [chainer.Variable(randn(2, 3)) for _ in range(3)]
    np.random.seed(11)            # the zoneout masks
    outputs = [link(x) for x in inputs]
    gys = [randn(*y.shape) for y in outputs]
    link.cleargrads()
    backward(outputs, gys)
    for t, (x, y, g) in enumerate(zip(inputs, outputs, gys)):
        cases.update({'{}/x{}'.format(name, t): x.array, '{}/y{}'.format(name, t): y.array,
                      '{}/gy{}'.format(name, t): g, '{}/gx{}'.format(name, t): x.grad})
    for path, param in link.namedparams():
        cases['{}/g{}'.format(name, path)] = param.grad

# the tree cells: children (c, h) of 3 nodes, then None children
for name in ('childsum', 'nary'):
    link = getattr(links, name)
    cs = [chainer.Variable(randn(2, 2)) for _ in range(3)]
    hs = [chainer.Variable(randn(2, 2)) for _ in range(3)]
    x = chainer.Variable(randn(2, 3))
    c, h = link(*(cs + hs + [x]))
    c2, h2 = link(cs[0], None, None, None, hs[2], None, x)
    gys = [randn(2, 2) for _ in range(4)]
    link.cleargrads()
    backward([c, h, c2, h2], gys)
    for i, (cv, hv) in enumerate(zip(cs, hs)):
        for key, value in (('c_in', cv.array), ('h_in', hv.array), ('gc_in', cv.grad),
                           ('gh_in', hv.grad)):
            cases['{}/{}{}'.format(name, key, i)] = value
    cases.update({'{}/x'.format(name): x.array, '{}/gx'.format(name): x.grad,
                  '{}/c'.format(name): c.array, '{}/h'.format(name): h.array,
                  '{}/c2'.format(name): c2.array, '{}/h2'.format(name): h2.array})
    for i, g in enumerate(gys):
        cases['{}/gy{}'.format(name, i)] = g
    for path, param in link.namedparams():
        cases['{}/g{}'.format(name, path)] = param.grad
childless = links.childsum(x)        # no children at all
cases.update({'childsum/c0': childless[0].array, 'childsum/h0': childless[1].array})

# ----- CTC -----
T, B, V = 6, 4, 5
xs = [chainer.Variable(randn(B, V)) for _ in range(T)]
t = rng.randint(1, V - 1, (B, 3)).astype(np.int32)
t[1, 1] = t[1, 0]                          # a repeat needs a blank between
input_length = np.array([6, 5, 6, 3], np.int32)
label_length = np.array([3, 2, 0, 1], np.int32)
cases.update({'ctc/x': np.stack([x.array for x in xs]), 'ctc/t': t,
              'ctc/input_length': input_length, 'ctc/label_length': label_length})
loss = F.connectionist_temporal_classification(xs, t, 0, input_length, label_length, 'no')
gy = randn(B)
backward([loss], [gy])
cases.update({'ctc/loss_no': loss.array, 'ctc/gy': gy,
              'ctc/gx': np.stack([x.grad for x in xs])})
for x in xs:
    x.cleargrad()
loss = F.connectionist_temporal_classification(xs, t, 0, input_length, label_length)
loss.backward()
cases.update({'ctc/loss_mean': loss.array, 'ctc/mean_gx': np.stack([x.grad for x in xs])})
cases['ctc/loss_full'] = F.connectionist_temporal_classification(xs, t, 0).array
cases['ctc/loss_blank4'] = F.connectionist_temporal_classification(
    xs, t, 4, input_length, label_length, 'no').array

# ----- zoneout and tree_lstm -----
h, x = chainer.Variable(randn(3, 5)), chainer.Variable(randn(3, 5))
np.random.seed(7)
y = F.zoneout(h, x, 0.4)
gy = randn(3, 5)
backward([y], [gy])
cases.update({'zoneout/h': h.array, 'zoneout/x': x.array, 'zoneout/y': y.array,
              'zoneout/gy': gy, 'zoneout/gh': h.grad, 'zoneout/gx': x.grad})
cs = [chainer.Variable(randn(2, 3)) for _ in range(3)]
x = chainer.Variable(randn(2, 18))
c, h = F.tree_lstm(*(cs + [x]))
gc, gh = randn(2, 3), randn(2, 3)
backward([c, h], [gc, gh])
cases.update({'tree/x': x.array, 'tree/c': c.array, 'tree/h': h.array, 'tree/gc': gc,
              'tree/gh': gh, 'tree/gx': x.grad})
for i, cv in enumerate(cs):
    cases['tree/c_in{}'.format(i)], cases['tree/gc_in{}'.format(i)] = cv.array, cv.grad

np.savez_compressed(os.path.join(OUT, 'rnn_cases.npz'), **cases)
print(len(cases), 'arrays')
