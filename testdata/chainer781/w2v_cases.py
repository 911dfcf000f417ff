"""word2vec's losses, run by make_misc_fixture.py on Chainer 7.8.1 and by
test_onefchainer.py on onefchainer (the same program): negative_sampling with
a fixed sampler (reduce 'sum' and 'no', an ignored label), the hierarchical
softmax over a Huffman tree, and the tree itself."""
import numpy as np


def run_w2v_cases(chainer, F, L):
    rng = np.random.RandomState(7816)
    out = {}
    x = chainer.Variable(rng.randn(4, 3).astype(np.float32))
    W = chainer.Variable(rng.randn(6, 3).astype(np.float32))
    t = np.array([1, -1, 5, 0], np.int32)
    fixed = rng.randint(0, 6, (4, 3)).astype(np.int32)
    out.update(x=x.array.copy(), W=W.array.copy(), t=t, fixed=fixed)
    for reduce in ('sum', 'no'):
        x.cleargrad()
        W.cleargrad()
        y, samples = F.negative_sampling(x, t, W, lambda shape: fixed.copy(), 2,
                                         reduce=reduce, return_samples=True)
        F.sum(y * y).backward()
        out.update({'ns_{}/y'.format(reduce): y.array, 'ns_{}/samples'.format(reduce): samples,
                    'ns_{}/gx'.format(reduce): x.grad, 'ns_{}/gW'.format(reduce): W.grad})
    counts = {0: 8, 1: 5, 2: 6, 3: 4, 4: 1, 5: 9}
    tree = L.BinaryHierarchicalSoftmax.create_huffman_tree(counts)
    out['tree'] = np.array(repr(tree))
    hsm = L.BinaryHierarchicalSoftmax(3, tree)
    hsm.W.array[...] = rng.randn(*hsm.W.shape)
    hsm.cleargrads()
    x.cleargrad()
    y = hsm(x, np.array([1, 4, 5, 0], np.int32))
    y.grad = np.array(1.5, np.float32)
    y.backward()
    out.update({'hsm/W': hsm.W.array.copy(), 'hsm/y': y.array, 'hsm/gx': x.grad,
                'hsm/gW': hsm.W.grad})
    return out
