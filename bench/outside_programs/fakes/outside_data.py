"""Small random stand-ins for Chainer's data-set getters (nothing can be downloaded here): the same
return types, shapes, dtypes and value ranges as chainer.datasets.get_mnist / get_cifar10 /
get_ptb_words, with few examples.  Uses whichever framework the program imported."""
import sys
import numpy as np


def _fw():
    return sys.modules.get('onefchainer') or sys.modules['chainer']


def _images(shape, n_class, withlabel, scale, dtype, n_train, n_test, seed):
    rng = np.random.RandomState(seed)
    dtype = np.dtype(dtype or _fw().get_dtype())
    out = []
    for n in (n_train, n_test):
        x = (rng.randint(0, 256, (n,) + shape).astype(dtype) * (scale / 255.)).astype(dtype)
        y = rng.randint(0, n_class, n).astype(np.int32)
        out.append(_fw().datasets.TupleDataset(x, y) if withlabel else x)
    return tuple(out)


def get_mnist(withlabel=True, ndim=1, scale=1., dtype=None, label_dtype=np.int32, rgb_format=False):
    shape = {1: (784,), 2: (28, 28), 3: (3 if rgb_format else 1, 28, 28)}[ndim]
    return _images(shape, 10, withlabel, scale, dtype, 512, 128, 1)


def get_cifar10(withlabel=True, ndim=3, scale=1., dtype=None):
    return _images((3, 32, 32) if ndim == 3 else (3072,), 10, withlabel, scale, dtype, 64, 32, 10)


def get_cifar100(withlabel=True, ndim=3, scale=1., dtype=None):
    return _images((3, 32, 32) if ndim == 3 else (3072,), 100, withlabel, scale, dtype, 64, 32, 100)


def get_ptb_words():
    rng = np.random.RandomState(0)

    def words(n):          # ids 1..199, '<eos>' (0) every 10 words, like the real corpus
        w = rng.randint(1, 200, n).astype(np.int32)
        w[::10] = 0
        return w
    return words(3000), words(600), words(600)
