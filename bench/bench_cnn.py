"""One training step of the CNN example model: onefchainer vs. Chainer 7.8.1 and PyTorch,
with the GEMM-only floor of the same step and where onefchainer's time goes.

Model (train_mnist.py --arch cnn without dropout, 128 hidden units): conv
3x3 1->32, batch norm, ReLU, max pool 2; conv 3x3 32->64, batch norm, ReLU,
max pool 2; Linear 3136->128, ReLU; Linear 128->10; softmax cross entropy,
Adam, batch 100.  Every framework starts from the same weights and sees the
same batches; steps are timed in interleaved chunks so that machine noise
hits all alike; times are the median chunk, ratios the median of the
chunk-by-chunk ratios against onefchainer.  Chainer and PyTorch are timed
when importable (run this with a Python that has Chainer 7.8.1 and PyTorch
installed); they are never required.

The floor: the matrix products of the step alone (the three of each
convolution's patch matrix and of each Linear, forward and backward, on the
same shapes and layouts, nothing else), timed in chunks between the models'
chunks.  The breakdown: onefchainer's step again, each part timed on its
own (convolution forward / backward with its col2im, batch norm,
ReLU, pooling, Linear, softmax cross entropy, Adam, and the rest: the
graph, backprop and the Python around them).  Peak memory: tracemalloc's
peak over one step, above what was allocated before it.

    python bench/bench_cnn.py [--steps 100] [--threads 1,2]

Each thread count runs in a fresh process (BLAS reads its thread count when
NumPy is imported), one after the other; about a minute each with all three
frameworks on a 2-core machine.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=100, help='timed steps (600 = one epoch)')
    parser.add_argument('--batchsize', '-b', type=int, default=100)
    parser.add_argument('--chunk', type=int, default=10, help='steps per timed chunk')
    parser.add_argument('--threads', default='1,2',
                        help='BLAS threads for everyone; a comma-separated list runs each')
    parser.add_argument('--no-breakdown', action='store_true',
                        help='only the step times and the floor')
    parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                        help="cpu: this process's CPU time instead of the wall clock, which "
                        'a busy machine disturbs less (fair at 1 thread only)')
    return parser.parse_args()


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ',' not in ARGS.threads:   # BLAS reads these once, at import
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[name] = ARGS.threads

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


def gemm_floor(batchsize):
    """The step's matrix products alone, as float32 arrays in the layouts
    onefchainer hands to BLAS: each convolution's y2 = W2 @ col, gW2 = gy2 @
    col^T and (but for the first, whose input needs no gradient) gcol = W2^T
    @ gy2; each Linear's y = x W^T, gW = gy^T x and gx = gy W.  Returns a
    step-like callable that ignores its arguments."""
    rng = np.random.RandomState(1)
    rand = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    products = []
    for c, o, side, needs_gx in ((1, 32, 28, False), (32, 64, 14, True)):
        col, W2, gy2 = rand(c * 9, batchsize * side * side), rand(o, c * 9), \
            rand(o, batchsize * side * side)
        products += [(W2, col), (gy2, col.T)] + ([(W2.T, gy2)] if needs_gx else [])
    for n_in, n_out in ((3136, 128), (128, 10)):
        x, W, gy = rand(batchsize, n_in), rand(n_out, n_in), rand(batchsize, n_out)
        products += [(x, W.T), (gy.T, x), (gy, W)]

    def step(x, t):
        for a, b in products:
            a @ b
    return step


CLOCK = time.perf_counter


def timed_chunks(contenders, batches, chunk):
    """Every contender over the same batches, `chunk` steps at a time, taking
    turns; returns {name: [ms/step of each chunk]}."""
    results = {name: [] for name in contenders}
    for start in range(0, len(batches), chunk):
        for name, (step, prepare) in contenders.items():
            work = [prepare(x, t) for x, t in batches[start:start + chunk]]
            begin = CLOCK()
            for x, t in work:
                step(x, t)
            results[name].append((CLOCK() - begin) / len(work) * 1e3)
    return results


# The parts of the breakdown: (label, owner, attribute): owner a class of
# onefchainer, None for the module itself, or 'model' for the Classifier
# (whose accfun, F.accuracy, is bound when it is made).  col2im runs inside
# the convolution's backward, a block of rows at a time (Chapter 22).
PARTS = [('convolution forward', 'Convolution2DFunction', 'forward'),
         ('convolution backward (with its col2im)', 'Convolution2DFunction', 'backward'),
         ('batch norm forward', 'BatchNormalizationFunction', 'forward'),
         ('batch norm backward', 'BatchNormalizationFunction', 'backward'),
         ('ReLU forward', 'ReLU', 'forward'),
         ('ReLU backward', 'ReLU', 'backward'),
         ('max pooling forward', 'MaxPooling2D', 'forward'),
         ('max pooling backward', 'MaxPooling2D', 'backward'),
         ('Linear forward', 'LinearFunction', 'forward'),
         ('Linear backward', 'LinearFunction', 'backward'),
         ('softmax cross entropy, accuracy', 'SoftmaxCrossEntropy', 'forward'),
         ('', 'SoftmaxCrossEntropy', 'backward'),
         ('', 'model', 'accfun'),
         ('Adam', 'AdamRule', '_step')]


def breakdown(step, model, batches):
    """ms per step spent in each part of onefchainer's step, by timing every
    call of the functions that make it up (a few microseconds of timing per
    call land in 'the rest')."""
    spent = {}
    originals = []

    def timed(key, function):
        def wrapper(*args, **kwargs):
            begin = CLOCK()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + CLOCK() - begin
        return wrapper

    for i, (label, owner, name) in enumerate(PARTS):
        holder = onefchainer if owner is None else model if owner == 'model' else \
            getattr(onefchainer, owner, None)
        if holder is None or name not in vars(holder):     # renamed: say so, not 0 ms
            raise SystemExit('bench_cnn.py: the breakdown times {}.{}, which onefchainer no '
                             'longer has; update PARTS'.format(owner or 'onefchainer', name))
        originals.append((holder, name, vars(holder)[name]))
        setattr(holder, name, timed(i, vars(holder)[name]))
    try:
        begin = CLOCK()
        for x, t in batches:
            step(x, t)
        total = (CLOCK() - begin) / len(batches) * 1e3
    finally:
        for holder, name, original in originals:
            setattr(holder, name, original)
    ms = [spent.get(i, 0.0) / len(batches) * 1e3 for i in range(len(PARTS))]
    merged = []
    for (label, _, _), t in zip(PARTS, ms):
        if label:
            merged.append([label, t])
        else:
            merged[-1][1] += t
    merged.append(['the rest (graph, backprop, links, Python)', total - sum(ms)])
    return total, merged


def peak_memory(step, x, t):
    """tracemalloc's peak over one step, above the memory held before it (MB)."""
    import gc
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        step(x, t)
        return (tracemalloc.get_traced_memory()[1] - before) / 1e6
    finally:
        tracemalloc.stop()


def run(args):
    global CLOCK
    if args.clock == 'cpu':
        CLOCK = time.process_time
    warmup = 10
    batches, source = load_batches(warmup + args.steps, args.batchsize)
    import onefchainer.functions as F
    import onefchainer.links as L
    np.random.seed(0)
    ours, model = chainer_like_step(onefchainer, F, L, {})
    weights = {name: param.array.copy() for name, param in model.namedparams()}
    identity = (lambda x, t: (x, t))
    contenders = {'onefchainer': (ours, identity),
                  'GEMM-only floor': (gemm_floor(args.batchsize), identity)}
    # Chainer 7.8.1 imports numpy.distutils, which newer setuptools' own
    # distutils breaks (no msvccompiler); Python 3.11's standard one works.
    os.environ.setdefault('SETUPTOOLS_USE_DISTUTILS', 'stdlib')
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
        torch.set_num_threads(int(args.threads))
        contenders['pytorch {}'.format(torch.__version__)] = (torch_step, torch_prepare)
    except ImportError:
        pass

    timed_chunks(contenders, batches[:warmup], warmup)          # warm up caches and BLAS
    results = timed_chunks(contenders, batches[warmup:], args.chunk)
    print('MNIST CNN (conv32-bn-pool, conv64-bn-pool, 128, 10), Adam, batch {}, {} steps '
          'on the CPU ({}), {} BLAS thread(s), NumPy {}{}'.format(
              args.batchsize, args.steps, source, args.threads, np.__version__,
              ', CPU time' if args.clock == 'cpu' else ''))
    mine = results['onefchainer']
    floor = results['GEMM-only floor']
    print('  {:<20} {:>8}  {:>15}  {:>9}'.format('', 'ms/step', 'vs onefchainer',
                                                 'vs floor'))
    for name, times in results.items():
        print('  {:<20} {:8.2f}  {:14.3f}x  {:8.3f}x'.format(
            name, statistics.median(times),
            statistics.median(t / o for t, o in zip(times, mine)),
            statistics.median(t / f for t, f in zip(times, floor))))
    spread = [t / o for t, o in zip(floor, mine)]
    print('  noise: the floor / onefchainer ratio of the {} chunks spans {:.3f}-{:.3f} '
          '(quartiles {:.3f}-{:.3f})'.format(
              len(spread), min(spread), max(spread),
              *statistics.quantiles(spread, n=4)[::2]))
    if not args.no_breakdown:
        total, parts = breakdown(ours, model, batches[warmup:warmup + 30])
        print('  onefchainer step, part by part (ms/step, {:.1f} ms in all while timed '
              'so):'.format(total))
        for label, ms in parts:
            print('    {:<44} {:6.2f}  {:5.1f} %'.format(label, ms, 100 * ms / total))
        print('  peak memory of one onefchainer step (tracemalloc): {:.1f} MB'.format(
            peak_memory(ours, *batches[0])))


def main(args):
    if ',' not in args.threads:
        return run(args)
    for threads in args.threads.split(','):          # a fresh process for each
        command = [sys.executable, os.path.abspath(__file__), '--threads', threads.strip(),
                   '--steps', str(args.steps), '--batchsize', str(args.batchsize),
                   '--chunk', str(args.chunk), '--clock', args.clock] + (
                       ['--no-breakdown'] if args.no_breakdown else [])
        subprocess.run(command, check=True)
        sys.stdout.flush()


if __name__ == '__main__':
    main(ARGS)
