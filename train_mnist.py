#!/usr/bin/env python
"""Train a multi-layer perceptron or a small CNN on MNIST (or Fashion-MNIST).

The command line and the output are those of Chainer v7's MNIST example, and
the program uses only Chainer's API: replace the `onefchainer` imports by
`chainer` ones and it runs on Chainer unchanged.

    python train_mnist.py                      # 20 epochs on the CPU
    python train_mnist.py -e 1                 # a quick run
    python train_mnist.py -d 0                 # GPU 0 (needs CuPy)
    python train_mnist.py -r result/snapshot_iter_12000 -e 30   # resume
    python train_mnist.py --autoload           # resume from the newest snapshot in --out
    python train_mnist.py -e 1 --train-size 1000 --test-size 500   # seconds, on a slice
    python train_mnist.py --arch cnn -e 10     # the convolutional network below

Files written to --out: log (JSON), loss.png and accuracy.png (with
matplotlib), cg.dot (the graph of the first iteration, for Graphviz) and a
snapshot of the whole trainer.  The last line says how it went:

    Finished 20 epochs in <seconds> s (<seconds> s per epoch), validation
    accuracy <percent> %; wrote accuracy.png, cg.dot, log, loss.png,
    snapshot_iter_12000 to result
"""
import argparse
import os
import sys

import onefchainer as chainer
import onefchainer.functions as F
import onefchainer.links as L
from onefchainer import training
from onefchainer.training import extensions


class MLP(chainer.Chain):
    """Three fully connected layers with ReLU between them."""

    def __init__(self, n_units, n_out):
        super().__init__()
        with self.init_scope():
            # in_size None: each layer takes its input size from the first
            # batch it sees (784 pixels for the first one).
            self.l1 = L.Linear(None, n_units)
            self.l2 = L.Linear(None, n_units)
            self.l3 = L.Linear(None, n_out)

    def forward(self, x):
        h1 = F.relu(self.l1(x))
        h2 = F.relu(self.l2(h1))
        return self.l3(h2)


class CNN(chainer.Chain):
    """Two 3x3 convolutions (32 and 64 channels), each followed by batch
    normalization, ReLU and 2x2 max pooling, then two fully connected layers:
    28x28 -> 14x14 -> 7x7 -> 256 units -> n_out, with dropout 0.25 before
    each fully connected layer."""

    def __init__(self, n_out, n_units=256):
        super().__init__()
        with self.init_scope():
            # No bias before batch normalization: its beta plays that part.
            self.conv1 = L.Convolution2D(None, 32, 3, pad=1, nobias=True)
            self.bn1 = L.BatchNormalization(32)
            self.conv2 = L.Convolution2D(None, 64, 3, pad=1, nobias=True)
            self.bn2 = L.BatchNormalization(64)
            self.l1 = L.Linear(None, n_units)
            self.l2 = L.Linear(None, n_out)

    def forward(self, x):
        if x.ndim == 2:                        # flat 784-pixel rows: make them images
            x = F.reshape(x, (len(x), 1, 28, 28))
        h = F.max_pooling_2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pooling_2d(F.relu(self.bn2(self.conv2(h))), 2)
        # Dropout 0.25 on the pooled features and on the hidden units: without
        # it the network fits the training set and stops near 99.1 %.
        h = F.dropout(h, 0.25)
        return self.l2(F.dropout(F.relu(self.l1(h)), 0.25))


def parse_args():
    parser = argparse.ArgumentParser(description='onefchainer example: MNIST')
    parser.add_argument('--batchsize', '-b', type=int, default=100,
                        help='number of images in each minibatch')
    parser.add_argument('--epoch', '-e', type=int, default=20,
                        help='number of sweeps over the dataset to train')
    parser.add_argument('--frequency', '-f', type=int, default=-1,
                        help='take a snapshot every this many epochs '
                             '(-1: once, at the end)')
    parser.add_argument('--device', '-d', type=str, default='-1',
                        help="device: -1 or '@numpy' for the CPU, N or "
                             "'@cupy:N' for GPU N")
    parser.add_argument('--gpu', '-g', type=int, default=None,
                        help='GPU id, the older form of --device (a negative '
                             'value means the CPU); overrides --device')
    parser.add_argument('--out', '-o', default='result',
                        help='directory for the results')
    parser.add_argument('--resume', '-r', type=str,
                        help='snapshot file to resume the training from')
    parser.add_argument('--autoload', action='store_true',
                        help='resume from the newest snapshot in --out, if any')
    parser.add_argument('--arch', choices=('mlp', 'cnn'), default='mlp',
                        help='the network: a multi-layer perceptron or a small '
                             'convolutional network')
    parser.add_argument('--unit', '-u', type=int, default=None,
                        help='number of units in each hidden layer (default: '
                             '1000 for the MLP, 256 for the CNN)')
    parser.add_argument('--noplot', dest='plot', action='store_false',
                        help='do not draw loss.png and accuracy.png')
    parser.add_argument('--dataset', choices=('mnist', 'fashion-mnist'),
                        default='mnist', help='which dataset to train on')
    parser.add_argument('--train-size', type=int, default=None,
                        help='train on the first N training images only '
                             '(default: all 60000)')
    parser.add_argument('--test-size', type=int, default=None,
                        help='evaluate on the first N test images only '
                             '(default: all 10000)')
    return parser.parse_args()


def main():
    args = parse_args()
    device = chainer.get_device(args.gpu if args.gpu is not None else args.device)

    if args.unit is None:
        args.unit = 1000 if args.arch == 'mlp' else 256

    print('Device: {}'.format(device))
    print('# arch: {}'.format(args.arch))
    print('# unit: {}'.format(args.unit))
    print('# Minibatch-size: {}'.format(args.batchsize))
    print('# epoch: {}'.format(args.epoch))
    print('')

    # Classifier adds softmax cross entropy and accuracy on top of the MLP
    # and reports both, which appear below as main/loss and main/accuracy.
    predictor = MLP(args.unit, 10) if args.arch == 'mlp' else CNN(10, args.unit)
    model = L.Classifier(predictor)
    model.to_device(device)
    device.use()

    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)

    ndim = 1 if args.arch == 'mlp' else 3     # the CNN takes (1, 28, 28) images
    try:
        if args.dataset == 'mnist':
            train, test = chainer.datasets.get_mnist(ndim=ndim)
        else:
            train, test = chainer.datasets.get_fashion_mnist(ndim=ndim)
    except (RuntimeError, OSError) as error:
        # No network and no local files is an expected failure, and the
        # message lists every missing file and what to do: no traceback.
        sys.exit('{}: {}'.format(type(error).__name__, error))
    # A quick run (a smoke test) takes only the first examples of each set.
    if args.train_size is not None:
        train, _ = chainer.datasets.split_dataset(train, args.train_size)
    if args.test_size is not None:
        test, _ = chainer.datasets.split_dataset(test, args.test_size)
    # Training batches are shuffled and repeat forever (the trainer decides
    # when to stop); test batches make a single pass in order.
    train_iter = chainer.iterators.SerialIterator(train, args.batchsize)
    test_iter = chainer.iterators.SerialIterator(test, args.batchsize,
                                                 repeat=False, shuffle=False)

    updater = training.updaters.StandardUpdater(train_iter, optimizer, device=device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=args.out)

    # Test-set loss and accuracy after every epoch (validation/main/...).
    trainer.extend(extensions.Evaluator(test_iter, model, device=device))
    # The graph behind the loss of the first iteration, as Graphviz DOT.
    trainer.extend(extensions.DumpGraph('main/loss'))
    # A snapshot of the whole trainer; only the newest one is kept.
    frequency = args.epoch if args.frequency == -1 else max(1, args.frequency)
    trainer.extend(extensions.snapshot(n_retains=1, autoload=args.autoload),
                   trigger=(frequency, 'epoch'))
    if args.arch == 'cnn':
        # With Adam's constant step the CNN's test accuracy peaks at about
        # 99.0 % by epoch 3 and then wanders; a step that shrinks by 0.7 each
        # epoch lets it settle.
        trainer.extend(extensions.ExponentialShift('alpha', 0.7), trigger=(1, 'epoch'))
    # Epoch averages of everything reported, written to <out>/log.
    log_report = extensions.LogReport()
    trainer.extend(log_report)
    if args.plot and extensions.PlotReport.available():
        trainer.extend(extensions.PlotReport(
            ['main/loss', 'validation/main/loss'], 'epoch', filename='loss.png'))
        trainer.extend(extensions.PlotReport(
            ['main/accuracy', 'validation/main/accuracy'], 'epoch',
            filename='accuracy.png'))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'validation/main/loss',
         'main/accuracy', 'validation/main/accuracy', 'elapsed_time']))
    trainer.extend(extensions.ProgressBar())

    if args.resume is not None:
        chainer.serializers.load_npz(args.resume, trainer)

    before = files_in(args.out)
    trainer.run()
    # ProgressBar leaves the cursor at the top of the bar it has wiped: on a
    # terminal the summary takes the bar's place.  In a file or a pipe the
    # wipe's escape codes end no line, so end it first.
    if not sys.stdout.isatty():
        print()
    print(summary(trainer, log_report.log, args.out, before))


def files_in(folder):
    """{name: (size, modification time)} of the files in folder."""
    if not os.path.isdir(folder):
        return {}
    return {entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(folder) if entry.is_file()}


def summary(trainer, log, out, before):
    """One line: how long it took, the last test accuracy, what went where."""
    epochs = trainer.updater.epoch
    line = 'Finished {} epoch{} in {:.1f} s'.format(
        epochs, '' if epochs == 1 else 's', trainer.elapsed_time)
    if epochs > 1:
        line += ' ({:.1f} s per epoch)'.format(trainer.elapsed_time / epochs)
    if log and 'validation/main/accuracy' in log[-1]:
        line += ', validation accuracy {:.2f} %'.format(
            100 * log[-1]['validation/main/accuracy'])
    written = sorted(name for name, stamp in files_in(out).items()
                     if before.get(name) != stamp)
    return line + '; wrote {} to {}'.format(', '.join(written) or 'nothing', out)


if __name__ == '__main__':
    main()
