"""Writes the small data files the programs read (nothing can be downloaded here).  Run with
python3 (needs numpy and Pillow).  Output: $OUTSIDE_WORK/data (default /tmp/onefchainer-outside/data)."""
import os
import random
import numpy as np
from PIL import Image

D = os.path.join(os.environ.get('OUTSIDE_WORK', '/tmp/onefchainer-outside'), 'data')
rng = np.random.RandomState(0)


def w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


# chainer-pix2pix: CMP facade "base" files cmp_bNNNN.jpg (RGB photo) and .png (labels 1..12)
fd = os.path.join(D, 'facade')
os.makedirs(fd, exist_ok=True)
for i in range(1, 7):
    Image.fromarray(rng.randint(0, 255, (290, 300, 3)).astype(np.uint8)).save(os.path.join(fd, 'cmp_b%04d.jpg' % i))
    lab = Image.fromarray(rng.randint(1, 13, (290, 300)).astype(np.uint8), mode='L').convert('P')
    lab.save(os.path.join(fd, 'cmp_b%04d.png' % i))

# chainer-att-seq2seq: vocab.txt (a word per line, id = line number, 0 is <eos>) and dataid.txt:
# "query ids,\tresponse ids," per line, each id followed by a comma
words = ['<eos>'] + ['w%d' % i for i in range(1, 40)]
w(os.path.join(D, 's2s', 'vocab.txt'), '\n'.join(words) + '\n')
r = random.Random(0)
lines = []
for _ in range(12):
    q = [r.randint(1, 39) for _ in range(r.randint(2, 6))]
    a = [r.randint(1, 39) for _ in range(r.randint(2, 6))] + [0]
    lines.append(''.join('%d,' % i for i in q) + '\t' + ''.join('%d,' % i for i in a))
w(os.path.join(D, 's2s', 'dataid.txt'), '\n'.join(lines) + '\n')
print('data in', D)

# chainer-attention-nmt: parallel text files (a sentence per line, words split by spaces) and
# vocabulary files (a word per line)
src_words = ['s%d' % i for i in range(30)]
tgt_words = ['t%d' % i for i in range(30)]
w(os.path.join(D, 'nmt', 'vocab.src'), '\n'.join(src_words) + '\n')
w(os.path.join(D, 'nmt', 'vocab.tgt'), '\n'.join(tgt_words) + '\n')
for split, n in (('train', 24), ('valid', 6)):
    r = random.Random(split)
    pairs = [(r.sample(src_words, r.randint(2, 7)), r.sample(tgt_words, r.randint(2, 7))) for _ in range(n)]
    w(os.path.join(D, 'nmt', split + '.src'), '\n'.join(' '.join(s) for s, _ in pairs) + '\n')
    w(os.path.join(D, 'nmt', split + '.tgt'), '\n'.join(' '.join(t) for _, t in pairs) + '\n')
