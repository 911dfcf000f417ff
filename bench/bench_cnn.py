"""One training step of the CNN example model: onefchainer vs. Chainer 7.8.1 and PyTorch.

Model (train_mnist.py --arch cnn): conv 3x3 1->32, batch norm, ReLU, max
pool 2; conv 3x3 32->64, batch norm, ReLU, max pool 2; Linear 3136->128,
ReLU; Linear 128->10; softmax cross entropy, Adam, batch 100.
Every framework starts from the same weights and sees the same batches;
steps are timed in interleaved chunks so that machine noise hits all alike;
times are the median chunk, ratios the median of the chunk-by-chunk ratios
against onefchainer.  Chainer and PyTorch are timed when importable (run
this with a Python that has Chainer 7.8.1 or PyTorch installed); they are
never required.

    python bench/bench_cnn.py [--steps 100] [--threads 1]
"""
import argparse
import os
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=100, help='timed steps (600 = one epoch)')
    parser.add_argument('--batchsize', '-b', type=int, default=100)
    parser.add_argument('--chunk', type=int, default=10, help='steps per timed chunk')
    parser.add_argument('--threads', type=int, default=1, help='BLAS threads for everyone')
    return parser.parse_args()


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None:   # BLAS reads these once, when NumPy is first imported
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[name] = str(ARGS.threads)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np                      # noqa: E402
import onefchainer                      # noqa: E402


def load_batches(n_batches, batchsize, seed=0):
    """MNIST batches (N, 1, 28, 28) when the data is there, random ones otherwise."""
    rng = np.random.RandomState(seed)
    try:
        train, _ = onefchainer.datasets.get_mnist(ndim=3)
        x, t = onefchainer.dataset.concat_examples(train)
        source = 'MNIST'
    except Exception as error:          # no data: the timing is the same
        print('(MNIST not available: {}; using random data)'.format(
            str(error).splitlines()[0]))
        x = rng.rand(60000, 1, 28, 28).astype(np.float32)
        t = rng.randint(0, 10, 60000).astype(np.int32)
        source = 'random data'
    order = rng.permutation(len(x))
    batches = [(x[order[i * batchsize % 59900:][:batchsize]],
                t[order[i * batchsize % 59900:][:batchsize]]) for i in range(n_batches)]
    return batches, source


def make_chain(chainer, F, L):
    """The example's CNN, written once for any framework with Chainer's API."""
    class CNN(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.conv1 = L.Convolution2D(1, 32, 3, pad=1, nobias=True)
                self.bn1 = L.BatchNormalization(32)
                self.conv2 = L.Convolution2D(32, 64, 3, pad=1, nobias=True)
                self.bn2 = L.BatchNormalization(64)
                self.l1 = L.Linear(3136, 128)
                self.l2 = L.Linear(128, 10)

        def forward(self, x):
            h = F.max_pooling_2d(F.relu(self.bn1(self.conv1(x))), 2)
            h = F.max_pooling_2d(F.relu(self.bn2(self.conv2(h))), 2)
            return self.l2(F.relu(self.l1(h)))
    return CNN


def chainer_like_step(chainer, F, L, weights):
    model = L.Classifier(make_chain(chainer, F, L)())
    params = dict(model.namedparams())
    for name, value in weights.items():
        params[name].array[...] = value
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    return lambda x, t: optimizer.update(model, x, t), model


def make_torch(weights):
    import torch
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(32, eps=2e-5, momentum=0.1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(64, eps=2e-5, momentum=0.1)
            self.l1 = nn.Linear(3136, 128)
            self.l2 = nn.Linear(128, 10)

        def forward(self, x):
            relu, pool = nn.functional.relu, nn.functional.max_pool2d
            h = pool(relu(self.bn1(self.conv1(x))), 2)
            h = pool(relu(self.bn2(self.conv2(h))), 2)
            return self.l2(relu(self.l1(h.flatten(1))))

    model = CNN()
    torch_names = {'W': 'weight', 'b': 'bias', 'gamma': 'weight', 'beta': 'bias'}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():          # '/predictor/conv1/W' -> 'conv1.weight'
            link, param = name.split('/')[-2:]
            params[link + '.' + torch_names[param]].copy_(torch.from_numpy(value))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, t):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), t)
        loss.backward()
        optimizer.step()
    prepare = lambda x, t: (torch.from_numpy(x), torch.from_numpy(t).long())
    return step, prepare, torch


def timed_chunks(contenders, batches, chunk):
    """Every contender over the same batches, `chunk` steps at a time, taking
    turns; returns {name: [ms/step of each chunk]}."""
    results = {name: [] for name in contenders}
    for start in range(0, len(batches), chunk):
        for name, (step, prepare) in contenders.items():
            work = [prepare(x, t) for x, t in batches[start:start + chunk]]
            begin = time.perf_counter()
            for x, t in work:
                step(x, t)
            results[name].append((time.perf_counter() - begin) / len(work) * 1e3)
    return results


def im2col_bytes(batchsize):
    """The patch matrices convolution_2d keeps for backward, and its padded copies."""
    layers = [(1, 28), (32, 14)]      # (in_channels, image side); 3x3 kernels, pad 1
    return [(c * 9 * batchsize * side * side * 4, batchsize * c * (side + 2) ** 2 * 4)
            for c, side in layers]


def main(args):
    warmup = 10
    batches, source = load_batches(warmup + args.steps, args.batchsize)
    import onefchainer.functions as F
    import onefchainer.links as L
    np.random.seed(0)
    ours, model = chainer_like_step(onefchainer, F, L, {})
    weights = {name: param.array.copy() for name, param in model.namedparams()}
    identity = (lambda x, t: (x, t))
    contenders = {'onefchainer': (ours, identity)}
    try:
        import chainer
        import chainer.functions as CF
        import chainer.links as CL
        contenders['chainer {}'.format(chainer.__version__)] = (
            chainer_like_step(chainer, CF, CL, weights)[0], identity)
    except ImportError:
        pass
    try:
        torch_step, torch_prepare, torch = make_torch(weights)
        torch.set_num_threads(args.threads)
        contenders['pytorch {}'.format(torch.__version__)] = (torch_step, torch_prepare)
    except ImportError:
        pass

    timed_chunks(contenders, batches[:warmup], warmup)          # warm up caches and BLAS
    results = timed_chunks(contenders, batches[warmup:], args.chunk)
    print('MNIST CNN (conv32-bn-pool, conv64-bn-pool, 128, 10), Adam, batch {}, {} steps '
          'on the CPU ({}), {} BLAS threads, NumPy {}'.format(
              args.batchsize, args.steps, source, args.threads, np.__version__))
    for name, times in results.items():
        paired = statistics.median(t / o for t, o in zip(times, results['onefchainer']))
        print('  {:<20} {:8.2f} ms/step  {:.3f}x onefchainer'.format(
            name, statistics.median(times), paired))
    for i, (col, padded) in enumerate(im2col_bytes(args.batchsize), 1):
        print('  conv{} im2col buffer: {:.2f} MB (+ {:.2f} MB padded input)'.format(
            i, col / 1e6, padded / 1e6))


if __name__ == '__main__':
    main(ARGS)
