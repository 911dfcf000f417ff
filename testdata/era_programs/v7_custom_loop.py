"""MNIST MLP in the style of a Chainer v6-v7 hand-written training loop
(only the imports changed)."""
import argparse
import os

import numpy

import onefchainer as chainer
from onefchainer.backends.cuda import to_cpu
from onefchainer.dataset import concat_examples
from onefchainer.datasets import mnist
import onefchainer.functions as F
import onefchainer.links as L
from onefchainer import serializers


class MLP(chainer.Chain):
    def __init__(self, n_units=30, n_out=10):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(None, n_units)
            self.l2 = L.Linear(n_units, n_out)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--batchsize', '-b', type=int, default=50)
    parser.add_argument('--epoch', '-e', type=int, default=2)
    parser.add_argument('--device', '-d', type=str, default='-1')
    parser.add_argument('--out', '-o', default='result')
    parser.add_argument('--resume', '-r', type=str)
    parser.add_argument('--size', type=int, default=500)
    args = parser.parse_args()

    device = chainer.get_device(args.device)
    device.use()
    model = MLP()
    model.to_device(device)
    optimizer = chainer.optimizers.SGD(lr=0.1)
    optimizer.setup(model)
    start_epoch = 0
    if args.resume:
        serializers.load_npz(os.path.join(args.resume, 'mlp.model'), model)
        serializers.load_npz(os.path.join(args.resume, 'mlp.state'), optimizer)
        start_epoch = optimizer.epoch

    train, test = mnist.get_mnist()
    train = train[:args.size]              # slices of a TupleDataset are lists
    test = test[:args.size]
    train_iter = chainer.iterators.SerialIterator(train, args.batchsize)
    test_iter = chainer.iterators.SerialIterator(test, args.batchsize, False, False)

    while train_iter.epoch < args.epoch - start_epoch:
        x, t = concat_examples(train_iter.next(), device)
        y = model(x)
        loss = F.softmax_cross_entropy(y, t)
        model.cleargrads()
        loss.backward()
        optimizer.update()

        if train_iter.is_new_epoch:
            optimizer.new_epoch()
            losses, accuracies = [], []
            with chainer.using_config('train', False), chainer.no_backprop_mode():
                for batch in test_iter:
                    x, t = concat_examples(batch, device)
                    y = model(x)
                    losses.append(to_cpu(F.softmax_cross_entropy(y, t).array))
                    accuracies.append(to_cpu(F.accuracy(y, t).array))
            test_iter.reset()
            print('epoch:{:02d} train_loss:{:.4f} val_loss:{:.4f} val_accuracy:{:.4f}'.format(
                start_epoch + train_iter.epoch, float(to_cpu(loss.array)),
                numpy.mean(losses), numpy.mean(accuracies)))

    os.makedirs(args.out, exist_ok=True)
    serializers.save_npz(os.path.join(args.out, 'mlp.model'), model)
    serializers.save_npz(os.path.join(args.out, 'mlp.state'), optimizer)


if __name__ == '__main__':
    main()
