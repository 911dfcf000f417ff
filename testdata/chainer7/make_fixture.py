"""Build a Chainer 7.8.1 reference fixture: Classifier(MLP 4-3-2) + Adam state after 2 updates.

Run with the reference venv:  /work/chainer-ref/venv/bin/python make_fixture.py [outdir]
Writes model.npz, optimizer.npz, expected.json into outdir (default: this file's folder).
"""
import json
import os
import sys
import tempfile

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizers, serializers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(4, 3)
            self.l2 = L.Linear(3, 2)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


rng = np.random.RandomState(1234)
INIT = {
    'predictor/l1/W': rng.randn(3, 4).astype(np.float32) * np.float32(0.5),
    'predictor/l1/b': rng.randn(3).astype(np.float32) * np.float32(0.1),
    'predictor/l2/W': rng.randn(2, 3).astype(np.float32) * np.float32(0.5),
    'predictor/l2/b': rng.randn(2).astype(np.float32) * np.float32(0.1),
}
# one fixed minibatch per update (batch of 5)
BATCHES = []
for _ in range(3):
    x = rng.randn(5, 4).astype(np.float32)
    t = rng.randint(0, 2, size=5).astype(np.int32)
    BATCHES.append((x, t))


def build():
    model = L.Classifier(MLP())
    params = dict((n.lstrip('/'), p) for n, p in model.namedparams())
    for k, v in INIT.items():
        params[k].array[...] = v
    opt = optimizers.Adam()
    opt.setup(model)
    return model, opt


def params_of(model):
    return {n.lstrip('/'): p.array.copy() for n, p in model.namedparams()}


def opt_state_of(opt):
    out = {}
    for n, p in opt.target.namedparams():
        rule = p.update_rule
        out[n.lstrip('/') + '/t'] = int(rule.t)
        for k, v in sorted(rule.state.items()):
            out[n.lstrip('/') + '/' + k] = v.copy()
    return out


def grads_of(model):
    return {n.lstrip('/'): p.grad.tolist() for n, p in model.namedparams()}


def tolist(v):
    return v.tolist() if isinstance(v, np.ndarray) else v


def npz_to_json(path):
    res = {}
    with np.load(path, allow_pickle=False) as z:
        for k in sorted(z.files):
            a = z[k]
            res[k] = {'dtype': str(a.dtype), 'shape': list(a.shape), 'value': a.tolist()}
    return res


model, opt = build()
history = [{'step': 0, 'params': {k: tolist(v) for k, v in params_of(model).items()}}]
for i in range(2):
    x, t = BATCHES[i]
    opt.update(model, x, t)
    history.append({'step': i + 1, 'loss': float(model.loss.array),
                    'accuracy': float(model.accuracy.array),
                    'grads': grads_of(model),
                    'params': {k: tolist(v) for k, v in params_of(model).items()}})

os.makedirs(OUT, exist_ok=True)
serializers.save_npz(os.path.join(OUT, 'model.npz'), model)
serializers.save_npz(os.path.join(OUT, 'optimizer.npz'), opt)
# for convenience, an identical model saved under the requested name as well
serializers.save_npz(os.path.join(OUT, 'classifier_adam.npz'), model)

# 3rd update, continuing in-process
x, t = BATCHES[2]
opt.update(model, x, t)
after3 = params_of(model)
state3 = opt_state_of(opt)
history.append({'step': 3, 'loss': float(model.loss.array),
                'accuracy': float(model.accuracy.array),
                'grads': grads_of(model),
                'params': {k: tolist(v) for k, v in after3.items()}})

# Round-trip check: fresh model + fresh Adam, load both files, do the 3rd update.
m2, o2 = build()
for p in m2.params():
    p.array[...] = 0  # make sure the values really come from the file
serializers.load_npz(os.path.join(OUT, 'model.npz'), m2)
serializers.load_npz(os.path.join(OUT, 'optimizer.npz'), o2)
o2.update(m2, x, t)
p2 = params_of(m2)
roundtrip_bit_exact = all(np.array_equal(p2[k], after3[k]) for k in after3)
assert roundtrip_bit_exact, 'reload + 3rd step differs from in-process 3rd step'

expected = {
    'chainer_version': chainer.__version__,
    'numpy_version': np.__version__,
    'model_def': 'L.Classifier(MLP), MLP = Chain(l1=L.Linear(4, 3), l2=L.Linear(3, 2)), '
                 'forward: l2(relu(l1(x))); Classifier lossfun=F.softmax_cross_entropy, accfun=F.accuracy',
    'optimizer': 'optimizers.Adam() defaults: alpha=0.001, beta1=0.9, beta2=0.999, eps=1e-08, '
                 'eta=1.0, weight_decay_rate=0, amsgrad=False; each step = optimizer.update(model, x, t)',
    'dtypes': {'x': 'float32', 't': 'int32', 'params': 'float32', 'adam m/v': 'float32', 't counters': 'int64'},
    'updates': [{'step': i + 1, 'x': BATCHES[i][0].tolist(), 't': BATCHES[i][1].tolist()}
                for i in range(3)],
    'model_npz': npz_to_json(os.path.join(OUT, 'model.npz')),
    'optimizer_npz': npz_to_json(os.path.join(OUT, 'optimizer.npz')),
    'params_history': history,
    'after_step3': {
        'params': {k: tolist(v) for k, v in after3.items()},
        'optimizer_state': {k: tolist(v) for k, v in state3.items()},
        'optimizer_t': int(opt.t),
    },
    'roundtrip_load_then_step3_bit_exact': bool(roundtrip_bit_exact),
    'note': 'Values are float32 numbers written as exact decimal of their float64 widening; '
            'compare with float32 tolerance ~1e-6 relative (Chainer itself is bit-exact here). '
            'params_history[0] = initial params (before any update); step 1 and 2 use updates[0], '
            'updates[1]; model.npz/optimizer.npz hold the state after step 2; after_step3 = result of '
            'optimizer.update(model, updates[2].x, updates[2].t) from that state. '
            'params_history[k].grads = gradients (d loss / d param) used by update k, '
            'so the optimizer math can be checked separately from autograd.',
}
with open(os.path.join(OUT, 'expected.json'), 'w') as f:
    json.dump(expected, f, indent=1)
print('wrote', sorted(os.listdir(OUT)))
print('roundtrip bit exact:', roundtrip_bit_exact)
