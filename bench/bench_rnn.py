"""Recurrent networks on the CPU: onefchainer vs. Chainer 7.8.1 and PyTorch.

Two training steps, each forward + backward + Adam, float32, the same
weights and data for every framework:

  nstep: L.NStepLSTM(2 layers, 256 -> 256 units, dropout 0) over a batch of
         64 sequences of 35 vectors; loss = mean(ys ** 2).  PyTorch:
         nn.LSTM(256, 256, num_layers=2) on the (35, 64, 256) tensor.
  lm:    a language-model step as Chainer's ptb example takes it:
         EmbedID(1000, 256) -> L.LSTM(256, 256) -> Linear(256, 1000),
         one call per token for 35 tokens of a batch of 64, softmax cross
         entropy summed over the steps, then backward, unchain_backward
         and Adam.  PyTorch: nn.Embedding -> nn.LSTM over the 35 tokens at
         once -> nn.Linear, cross entropy, the state detached between steps.

On the CPU PyTorch's nn.LSTM runs oneDNN's fused LSTM kernels; 'pytorch-gemm'
is the same model with them switched off (torch.backends.mkldnn.enabled =
False), PyTorch's own matrix products and elementwise ops, as onefchainer
runs NumPy's.

Steps are timed in interleaved chunks (machine noise hits all alike); the
time is the median chunk's per step, the ratio the median of the chunk-by-
chunk ratios (other / onefchainer: above 1, onefchainer is faster).  Chainer
and PyTorch are timed when importable (run this with the Python of a venv
that has them); they are never required.

    python bench/bench_rnn.py [--chunks 7] [--chunk 3] [--threads 2] [--only nstep]
                              [--clock cpu]
"""
import argparse
import os
import statistics
import sys
import time
import types


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--chunks', type=int, default=7, help='timed chunks per framework')
    parser.add_argument('--chunk', type=int, default=3, help='steps per chunk')
    parser.add_argument('--threads', default='2', help='BLAS / torch threads')
    parser.add_argument('--only', choices=('nstep', 'lm'), help='run one of the two')
    parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                        help="cpu: this process's CPU time instead of the wall clock, which "
                        'a busy machine disturbs less (fair at 1 thread only)')
    return parser.parse_args()


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None:      # BLAS reads these once, at import
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[name] = ARGS.threads

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np                      # noqa: E402
import onefchainer                      # noqa: E402

T, B, UNITS, VOCAB = 35, 64, 256, 1000


def import_chainer():
    """Chainer 7.8.1, or None. (Its environment check needs numpy.distutils and
    pkg_resources, which newer setuptools lack: it is replaced by a no-op.)"""
    check = types.ModuleType('chainer._environment_check')
    check.check = lambda: None
    sys.modules.setdefault('chainer._environment_check', check)
    try:
        import chainer
        import chainer.functions      # noqa: F401
        import chainer.links          # noqa: F401
        return chainer
    except Exception:
        return None


def import_torch():
    try:
        import torch
        torch.set_num_threads(int(ARGS.threads) if ARGS else 2)
        return torch
    except Exception:
        return None


# ----- the NStepLSTM step ------------------------------------------------------

def nstep_data(seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(-1, 1, (B, T, UNITS)).astype(np.float32)


def nstep_chainer_like(ch, data, weights):
    """A step function for onefchainer or Chainer (the same API)."""
    F, L = ch.functions, ch.links
    link = L.NStepLSTM(2, UNITS, UNITS, 0.0)
    for layer, ws in zip(link, weights):
        for j in range(8):
            getattr(layer, 'w%d' % j).array[...] = ws['w%d' % j]
            getattr(layer, 'b%d' % j).array[...] = ws['b%d' % j]
    opt = ch.optimizers.Adam().setup(link)
    xs = [data[j] for j in range(B)]

    def step():
        hy, cy, ys = link(None, None, xs)
        loss = F.mean(F.square(F.concat(ys, axis=0)))
        link.cleargrads()
        loss.backward()
        opt.update()
        return float(loss.array)
    return step


def nstep_torch(torch, data, weights):
    lstm = torch.nn.LSTM(UNITS, UNITS, num_layers=2)
    with torch.no_grad():
        for k, ws in enumerate(weights):
            # PyTorch stacks the gates i, f, g (Chainer's a), o: Chainer's w0, w1, w2, w3.
            getattr(lstm, 'weight_ih_l%d' % k).copy_(torch.from_numpy(
                np.concatenate([ws['w%d' % j] for j in range(4)])))
            getattr(lstm, 'weight_hh_l%d' % k).copy_(torch.from_numpy(
                np.concatenate([ws['w%d' % j] for j in range(4, 8)])))
            getattr(lstm, 'bias_ih_l%d' % k).copy_(torch.from_numpy(
                np.concatenate([ws['b%d' % j] for j in range(4)])))
            getattr(lstm, 'bias_hh_l%d' % k).copy_(torch.from_numpy(
                np.concatenate([ws['b%d' % j] for j in range(4, 8)])))
    opt = torch.optim.Adam(lstm.parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-8)
    x = torch.from_numpy(np.ascontiguousarray(data.transpose(1, 0, 2)))

    def step():
        out, _ = lstm(x)
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def nstep_weights(seed=1):
    rng = np.random.RandomState(seed)
    return [{name: rng.uniform(-0.06, 0.06, (UNITS, UNITS) if name[0] == 'w' else UNITS)
             .astype(np.float32) for name in ['w%d' % j for j in range(8)] +
             ['b%d' % j for j in range(8)]} for _ in range(2)]


# ----- the L.LSTM language-model step ---------------------------------------------

def lm_data(seed=2):
    rng = np.random.RandomState(seed)
    return rng.randint(0, VOCAB, (T + 1, B)).astype(np.int32)


def lm_weights(seed=3):
    rng = np.random.RandomState(seed)
    return {'embed': rng.uniform(-0.1, 0.1, (VOCAB, UNITS)).astype(np.float32),
            'upward_W': rng.uniform(-0.06, 0.06, (4 * UNITS, UNITS)).astype(np.float32),
            'upward_b': rng.uniform(-0.06, 0.06, 4 * UNITS).astype(np.float32),
            'lateral_W': rng.uniform(-0.06, 0.06, (4 * UNITS, UNITS)).astype(np.float32),
            'out_W': rng.uniform(-0.06, 0.06, (VOCAB, UNITS)).astype(np.float32),
            'out_b': np.zeros(VOCAB, np.float32)}


def lm_chainer_like(ch, tokens, w):
    F, L = ch.functions, ch.links

    class RNNLM(ch.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.embed = L.EmbedID(VOCAB, UNITS)
                self.lstm = L.LSTM(UNITS, UNITS)
                self.out = L.Linear(UNITS, VOCAB)

        def forward(self, x):
            return self.out(self.lstm(self.embed(x)))
    model = RNNLM()
    model.embed.W.array[...] = w['embed']
    model.lstm.upward.W.array[...] = w['upward_W']
    model.lstm.upward.b.array[...] = w['upward_b']
    model.lstm.lateral.W.array[...] = w['lateral_W']
    model.out.W.array[...] = w['out_W']
    model.out.b.array[...] = w['out_b']
    opt = ch.optimizers.Adam().setup(model)

    def step():
        loss = 0
        for t in range(T):
            loss += F.softmax_cross_entropy(model(tokens[t]), tokens[t + 1])
        model.cleargrads()
        loss.backward()
        loss.unchain_backward()
        opt.update()
        return float(loss.array) / T
    return step


def lm_torch(torch, tokens, w):
    nn = torch.nn

    class RNNLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, UNITS)
            self.lstm = nn.LSTM(UNITS, UNITS)
            self.out = nn.Linear(UNITS, VOCAB)
    model = RNNLM()
    with torch.no_grad():
        # Chainer's F.lstm interleaves the gates (a, i, f, o per unit); PyTorch
        # stacks i, f, g, o: the same weights, rows reordered.
        def restack(m):
            a, i, f, o = (m[k::4] for k in range(4))
            return torch.from_numpy(np.ascontiguousarray(np.concatenate([i, f, a, o])))
        model.embed.weight.copy_(torch.from_numpy(w['embed']))
        model.lstm.weight_ih_l0.copy_(restack(w['upward_W']))
        model.lstm.bias_ih_l0.copy_(restack(w['upward_b']))
        model.lstm.weight_hh_l0.copy_(restack(w['lateral_W']))
        model.lstm.bias_hh_l0.zero_()
        model.out.weight.copy_(torch.from_numpy(w['out_W']))
        model.out.bias.copy_(torch.from_numpy(w['out_b']))
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    x = torch.from_numpy(tokens[:-1].astype(np.int64))
    t = torch.from_numpy(tokens[1:].astype(np.int64))
    state = [None]

    def step():
        out, (h, c) = model.lstm(model.embed(x), state[0])
        state[0] = (h.detach(), c.detach())
        logits = model.out(out)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), t.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def without_onednn(torch, step):
    """The step with PyTorch's oneDNN (mkldnn) kernels off: its nn.LSTM then runs
    on its own matrix products and elementwise ops, as onefchainer does on NumPy's."""
    def plain():
        torch.backends.mkldnn.enabled = False
        try:
            return step()
        finally:
            torch.backends.mkldnn.enabled = True
    return plain


# ----- timing ------------------------------------------------------------------------

def time_chunks(steps, chunks, chunk):
    """{name: [seconds per step of each chunk]}, the frameworks interleaved."""
    for step in steps.values():        # warm up (lazy kernels, allocators)
        step()
    clock = time.process_time if ARGS.clock == 'cpu' else time.perf_counter
    times = {name: [] for name in steps}
    for _ in range(chunks):
        for name, step in steps.items():
            start = clock()
            for _ in range(chunk):
                step()
            times[name].append((clock() - start) / chunk)
    return times


def report(title, times):
    print(title)
    ours = times['onefchainer']
    for name, ts in times.items():
        ratio = statistics.median(t / o for t, o in zip(ts, ours))
        print('  {:12s} {:8.1f} ms/step   {}'.format(
            name, 1000 * statistics.median(ts),
            '' if name == 'onefchainer' else 'ratio {:.2f} (>1: onefchainer faster)'
            .format(ratio)))


def main():
    chainer, torch = import_chainer(), import_torch()
    print('onefchainer {}, NumPy {}, Chainer {}, PyTorch {}; {} thread(s); {} chunks of {} '
          'steps; {} clock'.format(onefchainer.__version__, np.__version__,
                                   chainer.__version__ if chainer else '-',
                                   torch.__version__ if torch else '-',
                                   ARGS.threads, ARGS.chunks, ARGS.chunk, ARGS.clock))
    benchmarks = [
        ('nstep', nstep_data, nstep_weights, nstep_chainer_like, nstep_torch,
         'NStepLSTM, 2 layers x 256, batch 64 x 35 steps, fwd + bwd + Adam:'),
        ('lm', lm_data, lm_weights, lm_chainer_like, lm_torch,
         'L.LSTM language model (vocab 1000, 256 units), 35 tokens x batch 64, '
         'fwd + bwd + Adam:')]
    for name, make_data, make_weights, chainer_like, torch_like, title in benchmarks:
        if ARGS.only not in (None, name):
            continue
        data, weights = make_data(), make_weights()
        steps = {'onefchainer': chainer_like(onefchainer, data, weights)}
        if chainer:
            steps['chainer'] = chainer_like(chainer, data, weights)
        if torch:
            steps['pytorch'] = torch_like(torch, data, weights)
            steps['pytorch-gemm'] = without_onednn(torch, torch_like(torch, data, weights))
        losses = {label: step() for label, step in steps.items()}
        print('  first losses (the same weights and data):', {
            k: round(v, 6) for k, v in losses.items()})
        report(title, time_chunks(steps, ARGS.chunks, ARGS.chunk))

if __name__ == '__main__':
    main()
