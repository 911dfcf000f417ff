"""Zero host syncs per training step, checked on a real GPU (needs CuPy).

A spin kernel keeps the GPU busy for about a second; then the host issues a
few Trainer steps (LogReport/PrintReport/ProgressBar whose triggers do not
fire).  Without a host sync the host is done long before the GPU; one sync
anywhere makes it wait for the spin.  One step that reads the loss is the
control that shows the detector works.  Few steps are issued because CUDA's
launch queue (about a thousand launches) would make the host wait too.

    python bench/gpu_no_sync.py
"""
import io
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import cupy                                   # noqa: E402
import numpy as np                            # noqa: E402
import onefchainer as chainer                 # noqa: E402
import onefchainer.functions as F             # noqa: E402
import onefchainer.links as L                 # noqa: E402
from onefchainer.training import extensions   # noqa: E402

SPIN = cupy.RawKernel(r'''
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}''', 'spin')


def busy_gpu():
    SPIN((1,), (1,), (np.int64(2 * 10 ** 9),))


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(784, 1000)
            self.l2 = L.Linear(1000, 1000)
            self.l3 = L.Linear(1000, 10)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def main():
    start = time.perf_counter()
    busy_gpu()
    cupy.cuda.Device().synchronize()
    spin_s = time.perf_counter() - start
    print('spin kernel alone: {:.3f} s'.format(spin_s))
    failures = 0
    for name in ('Adam', 'SGD', 'MomentumSGD', 'AdaGrad', 'AdaDelta', 'RMSprop'):
        model = L.Classifier(MLP())
        optimizer = getattr(chainer.optimizers, name)().setup(model)
        rng = np.random.RandomState(0)
        data = chainer.datasets.TupleDataset(rng.rand(2000, 784).astype(np.float32),
                                             rng.randint(0, 10, 2000).astype(np.int32))
        updater = chainer.training.StandardUpdater(
            chainer.iterators.SerialIterator(data, 100), optimizer, device=0)
        trainer = chainer.training.Trainer(updater, (8, 'iteration'), out=tempfile.mkdtemp())
        trainer.extend(extensions.LogReport(trigger=(1000, 'iteration')))
        trainer.extend(extensions.PrintReport(['epoch', 'main/loss']))
        trainer.extend(extensions.ProgressBar(update_interval=2, out=io.StringIO()))
        for _ in range(3):                 # warm up: kernels compiled, memory pooled
            updater.update()
        cupy.cuda.Device().synchronize()
        busy_gpu()
        start = time.perf_counter()
        trainer.run()                      # iterations 4 to 8
        host_s = time.perf_counter() - start
        cupy.cuda.Device().synchronize()
        # The same without the Trainer and the batch copies (a copy from
        # pageable host memory may wait for the GPU): tells the two apart.
        batches = [chainer.dataset.concat_examples(data[i:i + 100], 0) for i in range(0, 500, 100)]
        cupy.cuda.Device().synchronize()
        busy_gpu()
        start = time.perf_counter()
        for x, t in batches:
            optimizer.update(model, x, t)
        steps_s = time.perf_counter() - start
        cupy.cuda.Device().synchronize()
        busy_gpu()
        start = time.perf_counter()
        updater.update()
        float(model.loss.data)             # the control: reads the loss
        control_s = time.perf_counter() - start
        ok = host_s < spin_s / 2 and steps_s < spin_s / 2 and control_s > spin_s / 2
        failures += not ok
        print('{:12} while the GPU spun {:.3f} s: 5 Trainer steps issued in {:.3f} s, 5 '
              'optimizer.update on GPU batches in {:.3f} s: {}; control (reads the loss) '
              'waited {:.3f} s'.format(name, spin_s, host_s, steps_s,
                                       'OK, no host sync' if ok else 'HOST SYNC (or no spin)',
                                       control_s))
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
