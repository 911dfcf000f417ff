"""How much does onefchainer itself cost on top of NumPy?

(a) a chain of N tiny elementwise ops, forward + backward: microseconds per op
    for N = 1e3, 1e4, 1e5 (should stay flat as N grows);
(b) the y = e^x function-fitting loop (MLP 1-16-32-1, leaky_relu, MSE, Adam,
    batch 100): milliseconds per iteration;
(c) peak resident memory of `train_mnist.py` over its epochs (needs MNIST under
    $ONEFCHAINER_DATASET_ROOT), and the RSS at the end of each epoch.

Each figure is the median of --runs runs.  Run from the repository root:
    python bench/bench_overhead.py [--runs 3] [--skip-mnist]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np                       # noqa: E402
import onefchainer as chainer            # noqa: E402
import onefchainer.functions as F        # noqa: E402
import onefchainer.links as L            # noqa: E402


def chain_of_tiny_ops(n_ops):
    x = chainer.Variable(np.ones(10, dtype=np.float32))
    start = time.perf_counter()
    h = x
    for _ in range(n_ops):
        h = h * 1.0001
    F.sum(h).backward()
    return (time.perf_counter() - start) / n_ops * 1e6


class FitMLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(1, 16)
            self.l2 = L.Linear(16, 32)
            self.l3 = L.Linear(32, 1)

    def forward(self, x):
        h = F.leaky_relu(self.l1(x))
        h = F.leaky_relu(self.l2(h))
        return self.l3(h)


def fit_exp(n_iterations=2000, batch=100):
    rng = np.random.RandomState(0)
    model = FitMLP()
    optimizer = chainer.optimizers.Adam().setup(model)

    def loss_fn(x, y):
        return F.mean_squared_error(model(x), y)

    xs = rng.uniform(-1, 1, (n_iterations, batch, 1)).astype(np.float32)
    ys = np.exp(xs)
    for i in range(100):                                  # warm up
        optimizer.update(loss_fn, xs[i], ys[i])
    start = time.perf_counter()
    for i in range(n_iterations):
        optimizer.update(loss_fn, xs[i], ys[i])
    elapsed = (time.perf_counter() - start) / n_iterations * 1e3
    final_loss = float(loss_fn(xs[0], ys[0]).data)
    return elapsed, final_loss


ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def _rss_mb(pid):
    try:
        with open('/proc/{}/status'.format(pid)) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def train_mnist_memory(epochs):
    """Run train_mnist.py, sampling its RSS; returns (peak, RSS after each epoch)."""
    command = [sys.executable, os.path.join(os.path.dirname(HERE), 'train_mnist.py'),
               '-e', str(epochs), '--noplot', '-o', os.path.join('/tmp', 'bench_mnist_out')]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, bufsize=1)
    per_epoch = []
    peak = 0.0

    def sample():
        nonlocal peak
        while process.poll() is None:
            rss = _rss_mb(process.pid)
            if rss:
                peak = max(peak, rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        # Drop the terminal controls (ProgressBar's cursor moves, PrintReport's
        # erase) that share a line with the rows.
        fields = ANSI_ESCAPE.sub(' ', line).split()
        # A PrintReport row: epoch, then numbers only (the progress bar says 'iter').
        if len(fields) >= 5 and fields[0].isdigit() and 'iter' not in line:
            per_epoch.append(_rss_mb(process.pid))
    process.wait()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError('train_mnist.py failed with exit code {}'.format(process.returncode))
    return peak, per_epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--mnist-epochs', type=int, default=2)
    parser.add_argument('--skip-mnist', action='store_true')
    args = parser.parse_args()

    print('(a) chain of tiny ops, forward + backward (median of {} runs)'.format(args.runs))
    for n_ops in (1000, 10000, 100000):
        times = [chain_of_tiny_ops(n_ops) for _ in range(args.runs)]
        print('    N = {:>6}: {:6.2f} us/op   (runs: {})'.format(
            n_ops, statistics.median(times), ', '.join('{:.2f}'.format(t) for t in times)))

    print('(b) y = e^x fitting loop, MLP 1-16-32-1, Adam, batch 100')
    results = [fit_exp() for _ in range(args.runs)]
    times = [r[0] for r in results]
    print('    {:.3f} ms/iteration   (runs: {}; final MSE {:.2e})'.format(
        statistics.median(times), ', '.join('{:.3f}'.format(t) for t in times), results[-1][1]))

    if not args.skip_mnist:
        print('(c) train_mnist.py, {} epochs: peak RSS'.format(args.mnist_epochs))
        peaks = []
        for _ in range(args.runs):
            peak, per_epoch = train_mnist_memory(args.mnist_epochs)
            peaks.append(peak)
            print('    peak {:.0f} MB; RSS after each epoch: {}'.format(
                peak, ', '.join('{:.0f} MB'.format(r) for r in per_epoch if r)))
        print('    median peak RSS: {:.0f} MB'.format(statistics.median(peaks)))


if __name__ == '__main__':
    main()
