"""An MNIST MLP with no framework at all: the "define-and-run" baseline.

Here the network is written twice by hand.  Each layer's forward pass
(__call__) keeps whatever its backward pass will need, and update() is that
backward pass, written out for this one layer: it turns the gradient of the
loss with respect to the layer's output into the gradient with respect to its
input, and takes an SGD step on its own parameters along the way.  Training
calls the layers forward in list order, then update() in reverse.  The
structure is fixed before any data flows ("define, then run"); branch, loop
or reuse a layer and the hand-written backward order must change too.

onefchainer.py is "define-by-run": ordinary Python code computes with
Variables, each operation records itself in a graph as it runs, and
loss.backward() walks that graph in reverse.  Only forward code is written;
the backward pass, the bookkeeping of saved inputs and the parameter updates
(Optimizer) come from the framework.  Compare this file with the MNIST example.

Usage: python minimum.py [--epoch 30] [--batchsize 128] [--lr 0.1] [--seed 0]
                         [--train-size N] [--test-size N]
"""

import argparse
import time

import numpy as np

from onefchainer.dataset import concat_examples
from onefchainer.datasets import get_mnist


class Linear:
    """y = x W^T + b, with W of shape (out_size, in_size)."""

    def __init__(self, in_size, out_size, rng):
        std = np.sqrt(2.0 / in_size)  # He normal: suits ReLU layers
        self.W = (rng.standard_normal((out_size, in_size)) * std).astype(np.float32)
        self.b = np.zeros(out_size, dtype=np.float32)
        self.x = None

    def __call__(self, x):
        self.x = x  # the weight gradient needs the input
        return x @ self.W.T + self.b

    def update(self, gy, lr):
        gx = gy @ self.W  # uses W before it changes
        self.W -= lr * (gy.T @ self.x)
        self.b -= lr * gy.sum(axis=0)
        self.x = None
        return gx


class ReLU:
    """y = max(x, 0); no parameters, so update() only passes the gradient on."""

    def __init__(self):
        self.mask = None

    def __call__(self, x):
        self.mask = x > 0  # the gradient flows only where the input was positive
        return x * self.mask

    def update(self, gy, lr):
        gx = gy * self.mask
        self.mask = None
        return gx


def softmax_cross_entropy(y, t):
    """Mean cross entropy of logits y (N, K) against labels t (N,).

    Returns the loss and its gradient with respect to y.  Subtracting each
    row's maximum before exponentiating keeps exp() from overflowing; the
    log-sum-exp then gives log softmax without taking log of a tiny number.
    """
    n = len(t)
    shifted = y - y.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_softmax = shifted - np.log(sum_exp)
    loss = -log_softmax[np.arange(n), t].mean()
    gy = exp / sum_exp  # softmax
    gy[np.arange(n), t] -= 1
    gy /= n
    return float(loss), gy


def forward(model, x):
    for layer in model:
        x = layer(x)
    return x


def backward_and_update(model, gy, lr):
    for layer in reversed(model):
        gy = layer.update(gy, lr)


def accuracy(model, x, t, batchsize=1000):
    correct = 0
    for i in range(0, len(x), batchsize):
        y = forward(model, x[i:i + batchsize])
        correct += int((y.argmax(axis=1) == t[i:i + batchsize]).sum())
    return correct / len(x)


def main():
    parser = argparse.ArgumentParser(description='MNIST MLP in plain NumPy')
    parser.add_argument('--epoch', type=int, default=30)
    parser.add_argument('--batchsize', type=int, default=128)
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train-size', type=int, default=None,
                        help='train on the first N images only (default: all)')
    parser.add_argument('--test-size', type=int, default=None,
                        help='evaluate on the first N images only (default: all)')
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    train, test = get_mnist()
    x_train, t_train = concat_examples(train)
    x_test, t_test = concat_examples(test)
    # A quick run (a smoke test) takes only the first examples of each set.
    x_train, t_train = x_train[:args.train_size], t_train[:args.train_size]
    x_test, t_test = x_test[:args.test_size], t_test[:args.test_size]

    model = [Linear(784, 100, rng), ReLU(),
             Linear(100, 100, rng), ReLU(),
             Linear(100, 10, rng)]

    n = len(x_train)
    print('epoch  train/loss  validation/accuracy  seconds')
    for epoch in range(1, args.epoch + 1):
        start = time.perf_counter()
        order = rng.permutation(n)
        loss_sum = 0.0
        for i in range(0, n, args.batchsize):
            index = order[i:i + args.batchsize]
            y = forward(model, x_train[index])
            loss, gy = softmax_cross_entropy(y, t_train[index])
            backward_and_update(model, gy, args.lr)
            loss_sum += loss * len(index)
        acc = accuracy(model, x_test, t_test)
        print('{:5d}  {:10.4f}  {:19.4f}  {:7.2f}'.format(
            epoch, loss_sum / n, acc, time.perf_counter() - start), flush=True)


if __name__ == '__main__':
    main()
