"""The floor: one MNIST training step written directly in NumPy, by hand.

The MNIST example's model (MLP 784-1000-1000-10, ReLU, softmax cross entropy
averaged over the batch, Adam with Chainer 7's formulas and defaults) with no
framework in between: no graph, no Variable, no per-operation Python objects.
Benchmarks compare onefchainer's step time with this one, so it is made as
fast as plain NumPy allows:

* all parameters live in one flat float32 array, and so do their gradients
  and Adam's two moment estimates; each W and b is a view into it.  The
  matrix products write the weight gradients straight into their views
  (``out=``), and Adam sweeps the flat arrays in one loop instead of a loop
  per parameter;
* Adam runs in blocks of 128 Ki elements, so the 3 MiB a block touches
  (parameters, gradients, both moments, two temporaries) stays in cache
  through its twelve elementwise passes, instead of twelve trips through
  main memory; the blocks are still big enough that the ~1 us cost of each
  NumPy call is lost in the noise;
* activations, their gradients and the ReLU masks are preallocated per batch
  size and reused, and every elementwise step is in place; ReLU is applied
  by multiplying with the mask (faster than np.maximum), and backward reuses
  that same mask;
* the first layer computes no gradient with respect to the input images.

Layers compute y = x @ W.T + b with W of shape (out, in), as Chainer's Linear
does.  Weights start LeCun-normal (std = 1/sqrt(fan_in)), biases at zero.

Usage:
    python bench/numpy_mlp.py            # time 600 steps of batch 100
    python bench/numpy_mlp.py --check    # gradients vs finite differences
Set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to choose the BLAS threads.
"""

import argparse
import gzip
import os
import time

import numpy as np

# The same dataset root as onefchainer (its default when the variable is unset).
MNIST_DIR = os.path.join(os.path.expanduser(
    os.environ.get('ONEFCHAINER_DATASET_ROOT') or '~/.onefchainer/dataset'), 'mnist')


class NumpyMLP:
    """MLP with ReLU between layers, trained by Adam on softmax cross entropy."""

    alpha = 0.001
    beta1 = 0.9
    beta2 = 0.999
    eps = 1e-8
    block = 131072  # elements per Adam block (see the module docstring)

    def __init__(self, sizes=(784, 1000, 1000, 10), seed=0, dtype=np.float32):
        self.sizes = tuple(sizes)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        total = sum(o * i + o for i, o in pairs)

        self.params = np.empty(total, self.dtype)
        self.grads = np.zeros(total, self.dtype)
        self.m = np.zeros(total, self.dtype)
        self.v = np.zeros(total, self.dtype)
        self.W, self.b, self.gW, self.gb = [], [], [], []
        offset = 0
        for n_in, n_out in pairs:
            for shape, dst, gdst in (((n_out, n_in), self.W, self.gW),
                                     ((n_out,), self.b, self.gb)):
                size = int(np.prod(shape))
                dst.append(self.params[offset:offset + size].reshape(shape))
                gdst.append(self.grads[offset:offset + size].reshape(shape))
                offset += size
        for W in self.W:
            W[...] = rng.standard_normal(W.shape) / np.sqrt(W.shape[1])
        for b in self.b:
            b[...] = 0

        self.t = 0  # Adam's step count
        self.set_block(self.block)
        self._buffers = {}

    def parameters(self):
        """[(W, b), ...] per layer, as views (copy them to keep them)."""
        return list(zip(self.W, self.b))

    def set_block(self, block):
        """Split the flat arrays into Adam blocks of `block` elements."""
        total = len(self.params)
        self.block = block = min(block, total)
        tmp1, tmp2 = np.empty(block, self.dtype), np.empty(block, self.dtype)
        self._adam_blocks = []
        for start in range(0, total, block):
            n = min(block, total - start)
            self._adam_blocks.append(
                tuple(a[start:start + n] for a in
                      (self.params, self.grads, self.m, self.v))
                + (tmp1[:n], tmp2[:n]))

    def _scratch(self, batchsize):
        """Per-layer buffers for one batch size, made on first use."""
        buf = self._buffers.get(batchsize)
        if buf is None:
            outs = self.sizes[1:]
            buf = {
                'h': [np.empty((batchsize, n), self.dtype) for n in outs],
                'gh': [np.empty((batchsize, n), self.dtype) for n in outs],
                'mask': [np.empty((batchsize, n), bool) for n in outs[:-1]],
                'rowmax': np.empty((batchsize, 1), self.dtype),
                'rowsum': np.empty((batchsize, 1), self.dtype),
                'rows': np.arange(batchsize),
            }
            self._buffers[batchsize] = buf
        return buf

    def _forward(self, x, buf):
        h, mask = buf['h'], buf['mask']
        n_layers = len(self.W)
        for i in range(n_layers):
            inp = x if i == 0 else h[i - 1]
            np.matmul(inp, self.W[i].T, out=h[i])
            h[i] += self.b[i]
            if i < n_layers - 1:  # ReLU, keeping the mask for backward
                np.greater(h[i], 0, out=mask[i])
                h[i] *= mask[i]
        return h[-1]

    def _loss_and_grad_logits(self, y, t, buf):
        """Mean softmax cross entropy; leaves d loss / d y in buf['gh'][-1].

        Overwrites y (the logits) with its row-max-shifted version.
        """
        n = len(t)
        rows = buf['rows']
        rowmax, rowsum = buf['rowmax'], buf['rowsum']
        gy = buf['gh'][-1]
        np.max(y, axis=1, keepdims=True, out=rowmax)
        y -= rowmax
        np.exp(y, out=gy)
        np.sum(gy, axis=1, keepdims=True, out=rowsum)
        # log-sum-exp minus the true class's shifted logit, averaged
        loss = float(np.log(rowsum).sum() - y[rows, t].sum()) / n
        gy /= rowsum  # softmax
        gy[rows, t] -= 1
        gy *= self.dtype.type(1.0 / n)
        return loss

    def loss(self, x, t):
        """The loss alone, with no gradients (used by the gradient check)."""
        buf = self._scratch(len(x))
        y = self._forward(x, buf)
        return self._loss_and_grad_logits(y, t, buf)

    def forward_backward(self, x, t):
        """Compute the loss and fill self.grads (and its views gW, gb)."""
        buf = self._scratch(len(x))
        h, gh, mask = buf['h'], buf['gh'], buf['mask']
        y = self._forward(x, buf)
        loss = self._loss_and_grad_logits(y, t, buf)
        for i in range(len(self.W) - 1, -1, -1):
            inp = x if i == 0 else h[i - 1]
            np.matmul(gh[i].T, inp, out=self.gW[i])
            np.sum(gh[i], axis=0, out=self.gb[i])
            if i > 0:
                np.matmul(gh[i], self.W[i], out=gh[i - 1])
                gh[i - 1] *= mask[i - 1]  # through the ReLU
        return loss

    def adam_update(self):
        """One Adam step over every parameter, from self.grads."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr = self.alpha * np.sqrt(1.0 - b2 ** self.t) / (1.0 - b1 ** self.t)
        scalar = self.dtype.type
        c1, c2, lr, eps = scalar(1 - b1), scalar(1 - b2), scalar(lr), scalar(self.eps)
        for p, g, m, v, tmp1, tmp2 in self._adam_blocks:
            # m += (1 - beta1) * (g - m)
            np.subtract(g, m, out=tmp1)
            tmp1 *= c1
            m += tmp1
            # v += (1 - beta2) * (g * g - v)
            np.multiply(g, g, out=tmp2)
            tmp2 -= v
            tmp2 *= c2
            v += tmp2
            # param -= lr * m / (sqrt(v) + eps)
            np.sqrt(v, out=tmp1)
            tmp1 += eps
            np.divide(m, tmp1, out=tmp1)
            tmp1 *= lr
            p -= tmp1

    def step(self, x, t):
        """One training step on a batch; returns the loss before the update."""
        loss = self.forward_backward(x, t)
        self.adam_update()
        return loss


# --- self-check ------------------------------------------------------------

def _check_gradients(eps=1e-6, seed=1):
    """Analytic gradients vs central finite differences, and Adam vs a plain
    transcription of its formulas, on a small float64 model."""
    rng = np.random.default_rng(seed)
    model = NumpyMLP((5, 4, 3), seed=seed, dtype=np.float64)
    model.set_block(10)  # 43 parameters: several Adam blocks, one partial
    model.b[0][...] = rng.standard_normal(4) * 0.1  # nonzero biases too
    model.b[1][...] = rng.standard_normal(3) * 0.1
    x = rng.standard_normal((7, 5))
    t = rng.integers(0, 3, size=7).astype(np.int32)

    model.forward_backward(x, t)
    analytic = model.grads.copy()
    numeric = np.empty_like(analytic)
    for k in range(len(model.params)):
        saved = model.params[k]
        model.params[k] = saved + eps
        up = model.loss(x, t)
        model.params[k] = saved - eps
        down = model.loss(x, t)
        model.params[k] = saved
        numeric[k] = (up - down) / (2 * eps)
    grad_err = np.max(np.abs(analytic - numeric) / (np.abs(numeric) + 1e-4))

    # two Adam steps against the formulas written the obvious way
    p, m, v = model.params.copy(), np.zeros_like(analytic), np.zeros_like(analytic)
    b1, b2 = model.beta1, model.beta2
    for step in (1, 2):
        g = analytic if step == 1 else model.grads.copy()
        lr = model.alpha * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        m = m + (1 - b1) * (g - m)
        v = v + (1 - b2) * (g * g - v)
        p = p - lr * m / (np.sqrt(v) + model.eps)
        model.adam_update()
        if step == 1:
            model.forward_backward(x, t)  # fresh gradients at the new point
    adam_err = np.max(np.abs(model.params - p))

    print('max relative gradient error: {:.2e}'.format(grad_err))
    print('max Adam parameter difference: {:.2e}'.format(adam_err))
    ok = grad_err < 1e-6 and adam_err < 1e-12
    print('OK' if ok else 'FAILED')
    return ok


# --- benchmark -------------------------------------------------------------

def _load_mnist_train():
    def read(name, header):
        with gzip.open(os.path.join(MNIST_DIR, name), 'rb') as f:
            return np.frombuffer(f.read(), np.uint8, offset=header)
    x = read('train-images-idx3-ubyte.gz', 16).reshape(-1, 784)
    t = read('train-labels-idx1-ubyte.gz', 8)
    return (x / np.float32(255)).astype(np.float32), t.astype(np.int32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='check gradients and exit')
    parser.add_argument('--batchsize', type=int, default=100)
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--chunk', type=int, default=50,
                        help='steps per timing chunk')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.check:
        raise SystemExit(0 if _check_gradients() else 1)

    if os.path.exists(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz')):
        x_all, t_all = _load_mnist_train()
        source = 'MNIST'
    else:
        rng = np.random.default_rng(args.seed)
        x_all = rng.random((60000, 784), dtype=np.float32)
        t_all = rng.integers(0, 10, 60000).astype(np.int32)
        source = 'random data'
    model = NumpyMLP(seed=args.seed)
    bs = args.batchsize
    order = np.random.default_rng(args.seed).permutation(len(x_all))
    # batches are gathered before timing: the step is measured, not indexing
    batches = []
    for i in range(args.steps):
        idx = order[(i * bs) % len(x_all):(i * bs) % len(x_all) + bs]
        batches.append((x_all[idx], t_all[idx]))

    model.step(*batches[0])  # warm-up: allocates the scratch buffers
    chunk_ms, losses = [], []
    for c in range(0, args.steps, args.chunk):
        start = time.perf_counter()
        for x, t in batches[c:c + args.chunk]:
            losses.append(model.step(x, t))
        n = len(batches[c:c + args.chunk])
        chunk_ms.append((time.perf_counter() - start) * 1000 / n)
    print('{} steps of batch {} on {}: median {:.2f} ms/step '
          '(chunks of {}: min {:.2f}, max {:.2f}); loss {:.3f} -> {:.3f}'.format(
              args.steps, bs, source, float(np.median(chunk_ms)), args.chunk,
              min(chunk_ms), max(chunk_ms), losses[0], np.mean(losses[-50:])))


if __name__ == '__main__':
    main()
