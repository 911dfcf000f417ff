"""Write Chainer 7.8.1 reference values for higher-order derivatives.

Run with the reference venv:
    /work/venv-chainer/bin/python make_double_backward_fixture.py [outdir]
Writes double_backward.npz into outdir (default: this file's folder), all float64:
  case/<name>/x<i>, gy, ggx<i>   a function's inputs, its output gradient and one
                                 direction per input (t: integer labels, no direction)
  case/<name>/y, gx<i>           Chainer's output and first-order gradients
  case/<name>/ddx<i>, ddgy       the gradients of sum_i(gx<i> * ggx<i>) w.r.t. each
                                 input and w.r.t. gy: the second-order results
  hvp/x, hvp/t, hvp/<param>, hvp/v/<param>, hvp/hv/<param>
                                 an MLP 4-8-3 (tanh, softmax cross entropy): Hessian of
                                 the loss w.r.t. all parameters times v
  wgan/<param>, wgan/x_real<k>, wgan/x_fake<k>, wgan/eps<k>, wgan/loss<k>,
  wgan/grad0/<param>, wgan/after/<param>
                                 a WGAN-GP critic (conv, leaky_relu, conv, leaky_relu,
                                 linear) trained 3 steps with Adam: its starting
                                 parameters, each step's batch and loss, the first
                                 step's gradients and the parameters after 3 steps
Only Chainer's public API is called.
"""
import os
import sys

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(19)
out = {}


def rand(*shape, low=None):
    a = np.asarray(rng.randn(*shape))      # () too: an array, not a float
    return a if low is None else np.abs(a) + low


def away_from_kinks(*shape):
    """Values at least 0.1 from 0 (relu, leaky_relu, elu)."""
    a = rng.uniform(0.1, 1.5, shape)
    return a * rng.choice([-1, 1], shape)


CASES = {
    'poly': (lambda x: x ** 3 - 2 * x * x + x / (1 + x * x), [rand(3, 4)]),
    'pow': (lambda a, b: a ** b, [rand(3, 4, low=0.5), rand(3, 4)]),
    'broadcast': (lambda a, b: a * b + a / (b + 3) - b, [rand(3, 4), rand(4, low=0.1)]),
    'matmul': (lambda a, b: F.matmul(a, b), [rand(3, 4), rand(4, 5)]),
    'matmul_t': (lambda a, b: F.matmul(a, b, transa=True, transb=True), [rand(4, 3), rand(5, 4)]),
    'linear': (lambda x, W, b: F.linear(x, W, b), [rand(3, 4), rand(5, 4), rand(5)]),
    'conv': (lambda x, W, b: F.convolution_2d(x, W, b, stride=2, pad=1),
             [rand(2, 3, 6, 5), rand(4, 3, 3, 3), rand(4)]),
    'deconv': (lambda x, W, b: F.deconvolution_2d(x, W, b, stride=2, pad=1),
               [rand(2, 3, 4, 4), rand(3, 2, 3, 3), rand(2)]),
    'relu': (lambda x: F.relu(x) * x, [away_from_kinks(3, 4)]),
    'leaky_relu': (lambda x: F.leaky_relu(x, 0.3) * x, [away_from_kinks(3, 4)]),
    'elu': (lambda x: F.elu(x, 0.7), [away_from_kinks(3, 4)]),
    'sigmoid': (F.sigmoid, [rand(3, 4)]),
    'tanh': (F.tanh, [rand(3, 4)]),
    'softplus': (lambda x: F.softplus(x, 2.0), [rand(3, 4)]),
    'exp': (F.exp, [rand(3, 4)]),
    'log': (F.log, [rand(3, 4, low=0.3)]),
    'sqrt': (F.sqrt, [rand(3, 4, low=0.3)]),
    'square': (lambda x: F.square(x) * x, [rand(3, 4)]),
    'sum_mean': (lambda x: F.sum(x * x, axis=1) + F.mean(x ** 3, axis=1), [rand(3, 4)]),
    'bl2': (lambda x: F.sqrt(F.batch_l2_norm_squared(x)), [rand(3, 2, 2)]),
    'shapes': (lambda x: F.sum(F.broadcast_to(F.transpose(F.reshape(x, (4, 3)))[None],
                                              (2, 3, 4)) ** 3, axis=0), [rand(3, 4)]),
    'concat_get_item': (lambda x: F.concat([x, x[:, ::-1] * x], axis=1)[:, [0, 2, 2, 5]] ** 2,
                        [rand(3, 4)]),
    'mse': (lambda a, b: F.mean_squared_error(a, b), [rand(3, 4), rand(3, 4)]),
    'softmax_cross_entropy': (
        lambda x, t: F.softmax_cross_entropy(x, t, enable_double_backprop=True),
        [rand(4, 5), np.array([1, 0, 4, 2], np.int32)]),
    'log_softmax': (F.log_softmax, [rand(3, 5)]),
    'sigmoid_cross_entropy': (lambda x, t: F.sigmoid_cross_entropy(x, t),
                              [rand(3, 4), rng.randint(-1, 2, (3, 4)).astype(np.int32)]),
    'layer_normalization': (lambda x, g, b: F.layer_normalization(x, g, b),
                            [rand(3, 5), rand(5), rand(5)]),
    'average_pooling_2d': (lambda x: F.average_pooling_2d(x, 3, 2, 1) ** 2,
                           [rand(2, 2, 5, 5)]),
    'max_pooling_2d': (lambda x: F.max_pooling_2d(x, 3, 2, 1) ** 2, [rand(2, 2, 6, 6)]),
    'max_pooling_2d_tiles': (lambda x: F.max_pooling_2d(x, 2) ** 2, [rand(2, 2, 6, 6)]),
    'batch_normalization': (lambda x, g, b: F.batch_normalization(x, g, b),
                            [rand(4, 3, 2, 2), rand(3), rand(3)]),
    'group_normalization': (lambda x, g, b: F.group_normalization(x, 2, g, b),
                            [rand(2, 4, 3), rand(4), rand(4)]),
    'swish': (lambda x, beta: F.swish(x, beta), [rand(2, 3, 2), rand(3)]),
    'prelu': (lambda x, W: F.prelu(x, W) * x, [away_from_kinks(2, 3, 2), rand(3)]),
}

for name, (f, xs) in CASES.items():
    key = 'case/{}/'.format(name)
    variables = [chainer.Variable(x) for x in xs]
    y = f(*variables)
    gy = chainer.Variable(rand(*y.shape))
    floats = [v for v in variables if v.dtype.kind == 'f']
    gxs = chainer.grad([y], floats, [gy], enable_double_backprop=True)
    ggxs = [rand(*v.shape) for v in floats]
    total = sum(F.sum(gx * ggx) for gx, ggx in zip(gxs, ggxs))
    second = chainer.grad([total], floats + [gy])
    for i, x in enumerate(xs):
        out[key + 'x{}'.format(i)] = x
    out[key + 'gy'] = gy.array
    out[key + 'y'] = y.array
    for i, (gx, ggx, dd) in enumerate(zip(gxs, ggxs, second)):
        out[key + 'ggx{}'.format(i)] = ggx
        out[key + 'gx{}'.format(i)] = gx.array
        out[key + 'ddx{}'.format(i)] = np.zeros_like(ggx) if dd is None else dd.array
    out[key + 'ddgy'] = second[-1].array

# ----- a Hessian-vector product --------------------------------------------------
with chainer.using_config('dtype', np.float64):
    mlp = chainer.Sequential(L.Linear(4, 8), F.tanh, L.Linear(8, 3))
x = rand(5, 4)
t = np.array([0, 2, 1, 1, 0], np.int32)
mlp(x)
params = sorted(mlp.namedparams())
for name, p in params:
    p.array[...] = rand(*p.shape) * 0.5
    out['hvp' + name] = p.array.copy()
out['hvp/x'], out['hvp/t'] = x, t
loss = F.softmax_cross_entropy(mlp(x), t, enable_double_backprop=True)
gs = chainer.grad([loss], [p for _, p in params], enable_double_backprop=True)
vs = [rand(*p.shape) for _, p in params]
hv = chainer.grad([sum(F.sum(g * v) for g, v in zip(gs, vs))], [p for _, p in params])
for (name, p), v, h in zip(params, vs, hv):
    out['hvp/v' + name] = v
    out['hvp/hv' + name] = h.array


# ----- a WGAN-GP critic, as Chainer projects write it ---------------------------
class Critic(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(1, 4, 3, stride=2, pad=1)
            self.c2 = L.Convolution2D(4, 8, 3, stride=2, pad=1)
            self.l3 = L.Linear(8 * 2 * 2, 1)

    def __call__(self, x):
        h = F.leaky_relu(self.c1(x), 0.2)
        h = F.leaky_relu(self.c2(h), 0.2)
        return self.l3(h)


with chainer.using_config('dtype', np.float64):
    critic = Critic()
critic(np.zeros((1, 1, 8, 8)))
for name, p in sorted(critic.namedparams()):
    p.array[...] = rand(*p.shape) * 0.3
    out['wgan' + name] = p.array.copy()
optimizer = chainer.optimizers.Adam(alpha=1e-2, beta1=0.5, beta2=0.9)
optimizer.setup(critic)
lam = 10.0
for step in range(3):
    x_real, x_fake = rand(4, 1, 8, 8), rand(4, 1, 8, 8) * 0.5 + 0.3
    eps = rng.uniform(0, 1, (4, 1, 1, 1))
    x_hat = chainer.Variable(eps * x_real + (1 - eps) * x_fake)
    grad, = chainer.grad([critic(x_hat)], [x_hat], enable_double_backprop=True)
    grad = F.sqrt(F.batch_l2_norm_squared(grad))
    loss_gp = lam * F.mean_squared_error(grad, np.ones_like(grad.array))
    loss = F.mean(critic(x_fake)) - F.mean(critic(x_real)) + loss_gp
    critic.cleargrads()
    loss.backward()
    if step == 0:
        for name, p in sorted(critic.namedparams()):
            out['wgan/grad0' + name] = p.grad.copy()
    optimizer.update()
    out.update({'wgan/x_real{}'.format(step): x_real, 'wgan/x_fake{}'.format(step): x_fake,
                'wgan/eps{}'.format(step): eps, 'wgan/loss{}'.format(step): loss.array})
for name, p in sorted(critic.namedparams()):
    out['wgan/after' + name] = p.array.copy()

np.savez_compressed(os.path.join(OUT, 'double_backward.npz'), **out)
print('wrote', len(out), 'arrays to', os.path.join(OUT, 'double_backward.npz'))
