"""One training step of the MNIST example model, onefchainer vs. the floor.

Model: MLP 784-1000-1000-10, ReLU, softmax cross entropy, Adam, batch 100.
The floor is the same math written by hand in NumPy (bench/numpy_mlp.py).
Both start from the same weights and see the same batches in the same order;
steps are timed in interleaved chunks so that machine noise hits both alike;
times are the median chunk, ratios the median of the chunk-by-chunk ratios.
PyTorch and Chainer are timed too when they happen to be importable; they
are never required.

    python bench/bench_mnist.py [--steps 600] [--threads 2] [--device -1]

With --device 0 (CuPy) the GPU step is compared with PyTorch eager on the same
GPU, when PyTorch is importable, and the NumPy floor is skipped.
"""
import argparse
import os
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=600, help='timed steps (600 = one epoch)')
    parser.add_argument('--batchsize', '-b', type=int, default=100)
    parser.add_argument('--chunk', type=int, default=20, help='steps per timed chunk')
    parser.add_argument('--threads', type=int, default=2, help='BLAS threads for everyone')
    parser.add_argument('--device', '-d', default='-1', help='-1 (CPU) or 0 / @cupy:0 (GPU)')
    parser.add_argument('--check', action='store_true',
                        help='also check that onefchainer and the floor compute the same losses')
    return parser.parse_args()


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None:   # BLAS reads these once, when NumPy is first imported
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[name] = str(ARGS.threads)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np                      # noqa: E402
import onefchainer as chainer           # noqa: E402
import onefchainer.functions as F       # noqa: E402
import onefchainer.links as L           # noqa: E402
from numpy_mlp import NumpyMLP          # noqa: E402

SIZES = (784, 1000, 1000, 10)


def load_batches(n_batches, batchsize, seed=0):
    """MNIST batches when the data is there, random ones otherwise."""
    rng = np.random.RandomState(seed)
    try:
        train, _ = chainer.datasets.get_mnist()
        x, t = chainer.dataset.concat_examples(train)
        source = 'MNIST'
    except Exception as error:          # no data: the timing is the same
        print('(MNIST not available: {}; using random data)'.format(
            str(error).splitlines()[0]))
        x = rng.rand(60000, 784).astype(np.float32)
        t = rng.randint(0, 10, 60000).astype(np.int32)
        source = 'random data'
    order = rng.permutation(len(x))
    batches = []
    for i in range(n_batches):
        index = order[(i * batchsize) % len(x):][:batchsize]
        if len(index) < batchsize:
            index = order[:batchsize]
        batches.append((x[index], t[index]))
    return batches, source


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(SIZES[0], SIZES[1])
            self.l2 = L.Linear(SIZES[1], SIZES[2])
            self.l3 = L.Linear(SIZES[2], SIZES[3])

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def make_onefchainer(weights, device):
    model = L.Classifier(MLP())
    for link, (W, b) in zip((model.predictor.l1, model.predictor.l2, model.predictor.l3), weights):
        link.W.data[...] = W
        link.b.data[...] = b
    model.to_device(device)
    optimizer = chainer.optimizers.Adam().setup(model)
    xp = chainer.get_device(device).xp

    def step(x, t):
        optimizer.update(model, x, t)
        return model.loss
    return step, xp


def make_torch(weights, device):
    import torch
    dev = torch.device('cpu' if device.xp is np else 'cuda:{}'.format(device.device_id))
    layers = []
    for W, b in weights:
        linear = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, t):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), t)
        loss.backward()
        optimizer.step()
        return loss
    to_device = (lambda x, t: (torch.from_numpy(x).to(dev), torch.from_numpy(t).long().to(dev)))
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    return step, to_device, sync, torch


def make_chainer(weights):
    import chainer as real_chainer
    import chainer.functions as RF
    import chainer.links as RL

    class RealMLP(real_chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.l1 = RL.Linear(SIZES[0], SIZES[1])
                self.l2 = RL.Linear(SIZES[1], SIZES[2])
                self.l3 = RL.Linear(SIZES[2], SIZES[3])

        def forward(self, x):
            return self.l3(RF.relu(self.l2(RF.relu(self.l1(x)))))

    model = RL.Classifier(RealMLP())
    for link, (W, b) in zip((model.predictor.l1, model.predictor.l2, model.predictor.l3), weights):
        link.W.array[...] = W
        link.b.array[...] = b
    optimizer = real_chainer.optimizers.Adam().setup(model)

    def step(x, t):
        optimizer.update(model, x, t)
    return step


def timed_chunks(contenders, batches, chunk):
    """Run every contender over the same batches, `chunk` steps at a time,
    taking turns; returns {name: [ms/step of each chunk]}."""
    results = {name: [] for name in contenders}
    for start in range(0, len(batches), chunk):
        for name, (step, prepare, sync) in contenders.items():
            work = [prepare(x, t) for x, t in batches[start:start + chunk]]
            sync()
            begin = time.perf_counter()
            for x, t in work:
                step(x, t)
            sync()
            results[name].append((time.perf_counter() - begin) / len(work) * 1e3)
    return results


def main(args):
    device = chainer.get_device(args.device)
    on_gpu = device.xp is not np
    warmup = 20
    batches, source = load_batches(warmup + args.steps, args.batchsize)
    floor = NumpyMLP(SIZES, seed=0)
    weights = [(W.copy(), b.copy()) for W, b in floor.parameters()]

    contenders = {}
    identity = (lambda x, t: (x, t))
    no_sync = (lambda: None)
    one_step, xp = make_onefchainer(weights, device)
    if on_gpu:
        import cupy
        to_gpu = (lambda x, t: (cupy.asarray(x), cupy.asarray(t)))
        contenders['onefchainer'] = (one_step, to_gpu, cupy.cuda.Device().synchronize)
    else:
        contenders['numpy (floor)'] = (floor.step, identity, no_sync)
        contenders['onefchainer'] = (one_step, identity, no_sync)
    try:
        torch_step, torch_prepare, torch_sync, torch = make_torch(weights, device)
        torch.set_num_threads(args.threads)
        contenders['pytorch {}'.format(torch.__version__)] = (torch_step, torch_prepare, torch_sync)
    except ImportError:
        pass
    if not on_gpu:
        try:
            import chainer as real_chainer
            contenders['chainer {}'.format(real_chainer.__version__)] = (
                make_chainer(weights), identity, no_sync)
        except ImportError:
            pass

    if args.check and not on_gpu:
        ours, theirs = make_onefchainer(weights, device)[0], NumpyMLP(SIZES, seed=0)
        for x, t in batches[:5]:
            a, b = float(ours(x, t).data), float(theirs.step(x, t))
            print('check: loss onefchainer {:.6f}  numpy {:.6f}'.format(a, b))

    timed_chunks(contenders, batches[:warmup], warmup)          # warm up caches and BLAS
    results = timed_chunks(contenders, batches[warmup:], args.chunk)

    print('MNIST MLP 784-1000-1000-10, Adam, batch {}, {} steps on {} ({}), {} BLAS threads'
          .format(args.batchsize, args.steps, device, source, args.threads))
    # The ratio is the median over chunks of (this chunk / the baseline's
    # chunk right beside it): a slow spell of the machine hits both chunks of
    # a pair, so it cancels, where a ratio of two medians would keep it.
    baseline_name = 'pytorch' if on_gpu else 'numpy (floor)'
    baseline = [v for k, v in results.items() if k.startswith(baseline_name)]
    for name, times in results.items():
        ratio = ''
        if baseline:
            paired = statistics.median(t / b for t, b in zip(times, baseline[0]))
            ratio = '  {:.3f}x {}'.format(paired, baseline_name)
        print('  {:<20} {:8.2f} ms/step{}'.format(name, statistics.median(times), ratio))


if __name__ == '__main__':
    main(ARGS)
