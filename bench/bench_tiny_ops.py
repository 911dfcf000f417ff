"""A chain of tiny elementwise ops, forward + backward: microseconds per op,
onefchainer against PyTorch eager on the same device (when importable).

With arrays of 10 elements the arithmetic is free, so this measures what each
op costs on the host: Python, graph recording and, on a GPU, kernel launches.

    python bench/bench_tiny_ops.py [--device 0] [--ops 2000] [--repeats 7]
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np                       # noqa: E402
import onefchainer as chainer            # noqa: E402
import onefchainer.functions as F        # noqa: E402


def onefchainer_chain(device, n_ops):
    xp = device.xp
    sync = (lambda: None) if xp is np else xp.cuda.Device().synchronize
    x = chainer.Variable(device.send(np.ones(10, dtype=np.float32)))

    def run():
        sync()
        start = time.perf_counter()
        h = x
        for _ in range(n_ops):
            h = h * 1.0001
        F.sum(h).backward()
        sync()
        return (time.perf_counter() - start) / n_ops * 1e6
    return run


def torch_chain(device, n_ops):
    import torch
    on_gpu = device.xp is not np
    dev = torch.device('cuda:{}'.format(device.device_id) if on_gpu else 'cpu')
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    x = torch.ones(10, dtype=torch.float32, device=dev, requires_grad=True)

    def run():
        x.grad = None
        sync()
        start = time.perf_counter()
        h = x
        for _ in range(n_ops):
            h = h * 1.0001
        h.sum().backward()
        sync()
        return (time.perf_counter() - start) / n_ops * 1e6
    return run, torch.__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', '-d', default='-1')
    parser.add_argument('--ops', type=int, default=2000)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    device = chainer.get_device(args.device)
    contenders = {'onefchainer': onefchainer_chain(device, args.ops)}
    try:
        run, version = torch_chain(device, args.ops)
        contenders['pytorch ' + version] = run
    except ImportError:
        pass
    for run in contenders.values():      # warm up: kernels compiled, pools filled
        run()
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):         # interleaved: machine noise hits both
        for name, run in contenders.items():
            times[name].append(run())
    print('chain of {} tiny ops (x * 1.0001 on 10 floats), forward + backward, on {}, '
          'median of {}'.format(args.ops, device, args.repeats))
    base = [v for k, v in times.items() if k.startswith('pytorch')]
    for name, values in times.items():
        ratio = ''
        if base:
            ratio = '  {:.2f}x pytorch'.format(
                statistics.median(a / b for a, b in zip(values, base[0])))
        print('  {:<20} {:7.2f} us/op{}'.format(name, statistics.median(values), ratio))


if __name__ == '__main__':
    main()
