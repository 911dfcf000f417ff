"""Joins results-chainer.tsv and results-onef.tsv into results.md."""
import os
H = os.environ.get('EXAMPLES_WORK', '/tmp/onefchainer-examples')


def load(v):
    p = os.path.join(H, 'results-%s.tsv' % v)
    if not os.path.exists(p):
        return None
    r = {}
    for line in open(p):
        name, ok, sec, err = (line.rstrip('\n').split('\t') + [''] * 4)[:4]
        r[name] = (ok == 'ok', sec, err)
    return r


c, o = load('chainer'), load('onef')
if c and o:
    names = list(c) + [n for n in o if n not in c]
    rows = ['| program | Chainer 7.8.1 | onefchainer | onefchainer first error |', '|---|---|---|---|']
    for n in names:
        a, b = c.get(n), o.get(n)
        f = lambda x: '-' if x is None else ('runs' if x[0] else 'FAILS: ' + x[2].replace('|', '\\|'))
        rows.append('| %s | %s | %s | %s |' % (n, 'runs' if a and a[0] else f(a), 'runs' if b and b[0] else 'fails',
                                               '' if b and b[0] else (b[2].replace('|', '\\|') if b else '')))
    both = [n for n in names if c.get(n, (0,))[0]]
    rows.append('')
    rows.append('Chainer runs %d of %d; onefchainer runs %d of %d (%d of the %d Chainer runs).' % (
        sum(x[0] for x in c.values()), len(c), sum(x[0] for x in o.values()), len(o),
        sum(o.get(n, (0,))[0] for n in both), len(both)))
    open(os.path.join(H, 'results.md'), 'w').write('\n'.join(rows) + '\n')
    print('\n'.join(rows[-1:]))
