"""MNIST MLP in the style of a Chainer v2-v5 program (only the imports changed)."""
import argparse
import os

import onefchainer as chainer
from onefchainer import configuration
from onefchainer.dataset import convert
import onefchainer.functions as F
import onefchainer.links as L
from onefchainer import training
from onefchainer.training import extensions


class MLP(chainer.Chain):
    def __init__(self, n_units, n_out):
        super(MLP, self).__init__()
        with self.init_scope():
            self.l1 = L.Linear(None, n_units)
            self.l2 = L.Linear(None, n_out)

    def __call__(self, x):
        return self.l2(F.relu(self.l1(x)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--batchsize', '-b', type=int, default=50)
    parser.add_argument('--epoch', '-e', type=int, default=2)
    parser.add_argument('--gpu', '-g', type=int, default=-1)
    parser.add_argument('--out', '-o', default='result')
    parser.add_argument('--resume', '-r', default='')
    parser.add_argument('--unit', '-u', type=int, default=30)
    parser.add_argument('--size', type=int, default=500)
    args = parser.parse_args()

    model = L.Classifier(MLP(args.unit, 10))
    if args.gpu >= 0:
        chainer.backends.cuda.get_device_from_id(args.gpu).use()
        model.to_gpu()
    optimizer = chainer.optimizers.MomentumSGD(lr=0.1)
    optimizer.setup(model)
    optimizer.add_hook(chainer.optimizer.WeightDecay(1e-4))

    train, test = chainer.datasets.get_mnist()
    train = chainer.datasets.SubDataset(train, 0, args.size)
    test = chainer.datasets.SubDataset(test, 0, args.size)
    train_iter = chainer.iterators.SerialIterator(train, args.batchsize)
    test_iter = chainer.iterators.SerialIterator(test, args.batchsize,
                                                 repeat=False, shuffle=False)

    updater = training.updaters.StandardUpdater(
        train_iter, optimizer, converter=convert.concat_examples, device=args.gpu)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=args.out)

    @training.make_extension(trigger=(1, 'epoch'))
    def test_accuracy(trainer):
        # v2-v5 programs evaluate by hand in test mode, without a graph
        test_iter.reset()
        hits = total = 0
        with configuration.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            for batch in test_iter:
                x, t = convert.concat_examples(batch, args.gpu)
                y = model.predictor(x)
                hits += int((y.array.argmax(axis=1) == t).sum())
                total += len(t)
        chainer.reporter.report({'test/accuracy': hits / total})

    trainer.extend(test_accuracy)
    trainer.extend(extensions.snapshot(), trigger=(1, 'epoch'))
    trainer.extend(extensions.snapshot_object(
        model, 'model_epoch_{.updater.epoch}'), trigger=(1, 'epoch'))
    trainer.extend(extensions.LogReport())
    trainer.extend(extensions.observe_lr())
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'main/accuracy', 'test/accuracy', 'lr']))

    if args.resume:
        chainer.serializers.load_npz(args.resume, trainer)
    trainer.run()
    chainer.serializers.save_npz(os.path.join(args.out, 'final.model'), model)


if __name__ == '__main__':
    main()
