"""Writes the small data files Chainer's examples read (nothing can be downloaded here).
Run with python3 (needs numpy and Pillow). Output: $EXAMPLES_WORK/data (default /tmp/onefchainer-examples/data);
MNIST's files are read from $ONEFCHAINER_DATASET_ROOT/mnist."""
import gzip, os, random, wave
import numpy as np

D = os.path.join(os.environ.get('EXAMPLES_WORK', '/tmp/onefchainer-examples'), 'data')
rng = np.random.RandomState(0)


def w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


# Chainer's MNIST cache (CHAINER_DATASET_ROOT/pfnet/chainer/mnist/{train,test}.npz, keys x, y),
# made from the official files in $ONEFCHAINER_DATASET_ROOT/mnist
mn = os.path.join(D, 'chainer_root', 'pfnet', 'chainer', 'mnist')
os.makedirs(mn, exist_ok=True)
src = os.path.join(os.environ['ONEFCHAINER_DATASET_ROOT'], 'mnist')
for name, prefix in (('train.npz', 'train'), ('test.npz', 't10k')):
    if os.path.exists(os.path.join(mn, name)):
        continue
    with gzip.open(os.path.join(src, prefix + '-images-idx3-ubyte.gz')) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(os.path.join(src, prefix + '-labels-idx1-ubyte.gz')) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    np.savez_compressed(os.path.join(mn, name), x=x, y=y)

# glance: mushrooms.csv (UCI format: class first, 22 categorical columns)
rows = ['class,' + ','.join('c%d' % i for i in range(22))]
for i in range(300):
    rows.append(','.join(random.Random(i).choice('ep') if j == 0 else 'abcdef'[rng.randint(6)]
                         for j in range(23)))
w(os.path.join(D, 'mushrooms.csv'), '\n'.join(rows) + '\n')

# memnn: bAbI task files
names, places = ['mary', 'john', 'sandra', 'daniel'], ['kitchen', 'garden', 'office', 'hallway']
def babi(n, seed):
    r = random.Random(seed); out = []
    for _ in range(n):
        where = {}
        for k in range(1, 6):
            p, q = r.choice(names), r.choice(places); where[p] = (q, k)
            out.append('%d %s went to the %s.' % (k, p.capitalize(), q))
        p = r.choice(sorted(where))
        out.append('6 Where is %s? \t%s\t%d' % (p.capitalize(), where[p][0], where[p][1]))
    return '\n'.join(out) + '\n'
w(os.path.join(D, 'babi', 'qa1_train.txt'), babi(40, 1))
w(os.path.join(D, 'babi', 'qa1_test.txt'), babi(10, 2))

# sentiment: Stanford Sentiment Treebank trees (PTB s-expressions)
words = 'good bad movie film great awful plot actor fun boring'.split()
def tree(r, depth):
    if depth == 0 or r.random() < 0.3:
        return '(%d %s)' % (r.randint(0, 4), r.choice(words))
    return '(%d %s %s)' % (r.randint(0, 4), tree(r, depth - 1), tree(r, depth - 1))
for name, n in (('train', 30), ('dev', 10), ('test', 10)):
    r = random.Random(name)
    w(os.path.join(D, 'trees', name + '.txt'), '\n'.join(tree(r, 3) for _ in range(n)) + '\n')

# text_classification: the "other" datasets' format: "<label> <text>" per line
for name, n in (('stsa.binary.train', 60), ('stsa.binary.test', 20)):
    r = random.Random(name)
    w(os.path.join(D, 'text', name),
      '\n'.join('%d %s' % (r.randint(0, 1), ' '.join(r.choice(words) for _ in range(r.randint(3, 9))))
                for _ in range(n)) + '\n')

# pix2pix: CMP facade base files cmp_bNNNN.jpg (RGB photo) / .png (labels 1..12, palette)
from PIL import Image
fd = os.path.join(D, 'facade')
os.makedirs(fd, exist_ok=True)
for i in range(1, 7):
    Image.fromarray(rng.randint(0, 255, (290, 300, 3)).astype(np.uint8)).save(
        os.path.join(fd, 'cmp_b%04d.jpg' % i))
    lab = Image.fromarray(rng.randint(1, 13, (290, 300)).astype(np.uint8), mode='L').convert('P')
    lab.save(os.path.join(fd, 'cmp_b%04d.png' % i))

# wavenet: VCTK layout wav48/<speaker>/<utt>.wav, 16-bit PCM
for k in range(5):
    p = os.path.join(D, 'vctk', 'wav48', 'p225', 'p225_%03d.wav' % k)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    t = np.arange(4000) / 16000.
    y = 0.5 * np.sin(2 * np.pi * (200 + 50 * k) * t) + 0.05 * rng.randn(t.size)
    with wave.open(p, 'wb') as f:
        f.setnchannels(1); f.setsampwidth(2); f.setframerate(16000)
        f.writeframes((y * 32767).astype(np.int16).tobytes())
print('data in', D)

# dcgan --dataset: a folder of 32x32 RGB images
imd = os.path.join(D, 'images')
os.makedirs(imd, exist_ok=True)
for i in range(32):
    Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)).save(os.path.join(imd, 'im%02d.png' % i))

# imagenet: 256x256 RGB JPEGs and Caffe-style "path label" lists
ind = os.path.join(D, 'imagenet')
os.makedirs(ind, exist_ok=True)
for i in range(4):
    Image.fromarray(rng.randint(0, 255, (256, 256, 3)).astype(np.uint8)).save(os.path.join(ind, 'i%d.jpg' % i))
w(os.path.join(ind, 'train.txt'), ''.join('i%d.jpg %d\n' % (i, i % 3) for i in range(4)))
w(os.path.join(ind, 'val.txt'), ''.join('i%d.jpg %d\n' % (i, i % 3) for i in range(2)))
