"""Small random stand-ins for the data set getters whose files cannot be downloaded here
(CIFAR-10/100, PTB words). Same return types, shapes, dtypes and value ranges as Chainer's
getters, few examples. Uses whichever framework the program imported."""
import sys
import numpy as np


def _fw():
    return sys.modules.get('onefchainer') or sys.modules['chainer']


def _cifar(n_class, withlabel=True, ndim=3, scale=1., dtype=None, n_train=64, n_test=32):
    rng = np.random.RandomState(n_class)
    dtype = np.dtype(dtype or _fw().get_dtype())
    out = []
    for n in (n_train, n_test):
        x = (rng.randint(0, 256, (n, 3, 32, 32)).astype(dtype) * (scale / 255.)).astype(dtype)
        if ndim == 1:
            x = x.reshape(n, -1)
        y = rng.randint(0, n_class, n).astype(np.int32)
        out.append(_fw().datasets.TupleDataset(x, y) if withlabel else x)
    return tuple(out)


def get_cifar10(withlabel=True, ndim=3, scale=1., dtype=None):
    return _cifar(10, withlabel, ndim, scale, dtype)


def get_cifar100(withlabel=True, ndim=3, scale=1., dtype=None):
    return _cifar(100, withlabel, ndim, scale, dtype)


N_VOCAB = 200


def get_ptb_words():
    rng = np.random.RandomState(0)
    # '<eos>' (id 0 here) every ~10 words, like the real corpus
    def words(n):
        w = rng.randint(1, N_VOCAB, n).astype(np.int32)
        w[::10] = 0
        return w
    return words(3000), words(600), words(600)


def get_ptb_words_vocabulary():
    v = {'<eos>': 0}
    for i in range(1, N_VOCAB):
        v['w%d' % i] = i
    return v
