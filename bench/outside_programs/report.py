"""Joins results-chainer.tsv, results-onef.tsv and results-onef-np126.tsv into results.md."""
import os
W = os.environ.get('OUTSIDE_WORK', '/tmp/onefchainer-outside')
VARIANTS = [('chainer', 'Chainer 7.8.1'), ('onef', 'onefchainer, NumPy 2'), ('onef-np126', 'onefchainer, NumPy 1.26')]


def load(v):
    p = os.path.join(W, 'results-%s.tsv' % v)
    r = {}
    if os.path.exists(p):
        for line in open(p):
            name, ok, sec, err = (line.rstrip('\n').split('\t') + [''] * 4)[:4]
            r[name] = (ok == 'ok', err)
    return r


res = [(label, load(v)) for v, label in VARIANTS]
res = [(label, r) for label, r in res if r]
names = []
for _, r in res:
    names += [n for n in r if n not in names]
rows = ['| program | ' + ' | '.join(l for l, _ in res) + ' | onefchainer first error |',
        '|---' * (len(res) + 2) + '|']
for n in names:
    cells = ['runs' if r.get(n, (0,))[0] else ('fails' if n in r else '-') for _, r in res]
    errs = [r[n][1] for _, r in res[1:] if n in r and not r[n][0]]
    rows.append('| %s | %s | %s |' % (n, ' | '.join(cells), (errs[0] if errs else '').replace('|', '\\|')[:160]))
rows.append('')
for label, r in res:
    rows.append('%s runs %d of %d.' % (label, sum(x[0] for x in r.values()), len(r)))
open(os.path.join(W, 'results.md'), 'w').write('\n'.join(rows) + '\n')
print('\n'.join(rows))
