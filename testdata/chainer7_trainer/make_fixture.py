"""Writes the fixture of test_training_part.py with real Chainer 7.8.1:

    /work/chainer-ref/venv/bin/python make_fixture.py

A small run is snapshotted at iteration 5 (mid-epoch, with a LogReport
summary in progress and an ExponentialShift under way), then continued to
the end; expected.json holds the final parameters and the log, for a test
that loads the same snapshot into onefchainer and continues it there."""
import json
import os
import shutil
import tempfile

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import training
from chainer.training import extensions

HERE = os.path.dirname(os.path.abspath(__file__))


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(4, 3)
            self.l2 = L.Linear(3, 2)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def main():
    rng = np.random.RandomState(0)
    x = rng.randn(40, 4).astype(np.float32)
    t = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    np.random.seed(0)
    model = L.Classifier(MLP())
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), 15, shuffle=False)
    updater = training.updaters.StandardUpdater(iterator, optimizer)
    out = tempfile.mkdtemp()
    trainer = training.Trainer(updater, (3, 'epoch'), out=out)
    trainer.extend(extensions.ExponentialShift('alpha', 0.5), trigger=(1, 'epoch'))
    trainer.extend(extensions.LogReport())
    trainer.extend(extensions.snapshot(), trigger=(5, 'iteration'))
    trainer.run()
    shutil.copy(os.path.join(out, 'snapshot_iter_5'), HERE)
    log = [{k: v for k, v in e.items() if k != 'elapsed_time'}
           for e in trainer.get_extension('LogReport').log]
    expected = {
        'chainer_version': chainer.__version__,
        'numpy_version': np.__version__,
        'data': {'x': x.tolist(), 't': t.tolist()},
        'final_iteration': updater.iteration,
        'final_alpha': optimizer.alpha,
        'final_params': {name: p.array.tolist() for name, p in model.namedparams()},
        'log': log,
    }
    with open(os.path.join(HERE, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1)
    shutil.rmtree(out)


if __name__ == '__main__':
    main()
