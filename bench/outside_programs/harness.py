"""Runs public Chainer programs by other people (programs.py) under real Chainer or onefchainer;
none of their code is kept in this repository.

  python3 harness.py VARIANT PYTHON [NAME...]      VARIANT: chainer | onef (a label after it,
                                                    e.g. onef-np126, names the results file)
Each program's repository is extracted (git archive of the recorded commit) from
$OUTSIDE_MIRRORS/<owner>+<name>/repo (a bare or ordinary git copy) to $OUTSIDE_WORK/src/, copied
fresh to run/VARIANT/<name>/, notebooks turned into scripts, the data patches of programs.py applied
(both variants), and in the onef variants only the import lines rewritten to onefchainer (the rule of
bench/chainer_examples).  Results: results-VARIANT.tsv (name, ok, seconds, first error line).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

H = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get('OUTSIDE_WORK', '/tmp/onefchainer-outside')
D = os.path.join(WORK, 'data')
sys.path.insert(0, H)
from programs import PROGRAMS  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    'examples_harness', os.path.join(os.path.dirname(H), 'chainer_examples', 'harness.py'))
_ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ex)
rewrite_imports, first_error = _ex.rewrite_imports, _ex.first_error


def git_dir(repo):
    base = os.path.join(os.environ['OUTSIDE_MIRRORS'], repo.replace('/', '+'), 'repo')
    return os.path.join(base, '.git') if os.path.isdir(os.path.join(base, '.git')) else base


def extract(repo, commit):
    """The commit's files (git ls-tree + cat-file: a shallow or partial copy may lack a big data
    blob, which is then left out)."""
    dst = os.path.join(WORK, 'src', repo.replace('/', '+'), commit)
    if not os.path.isdir(dst):
        g = git_dir(repo)
        tree = subprocess.run(['git', '-C', g, 'ls-tree', '-r', '-z', commit], check=True,
                              capture_output=True).stdout.decode().split('\0')
        for entry in filter(None, tree):
            meta, path = entry.split('\t', 1)
            mode, kind, sha = meta.split()
            if kind != 'blob' or mode == '120000':
                continue
            r = subprocess.run(['git', '-C', g, 'cat-file', 'blob', sha], capture_output=True)
            if r.returncode:
                continue
            fp = os.path.join(dst + '.tmp', path)
            os.makedirs(os.path.dirname(fp), exist_ok=True)
            open(fp, 'wb').write(r.stdout)
        os.rename(dst + '.tmp', dst)
    return dst


def notebook_to_script(path):
    """A notebook's code cells in order, as one script; cell magics (%%bash ...) drop their cell,
    line magics (%matplotlib) and shell escapes (!pip) drop their line."""
    nb = json.load(open(path))
    out = []
    for c in nb['cells']:
        if c['cell_type'] != 'code':
            continue
        src = ''.join(c['source'])
        if src.lstrip().startswith('%%'):
            continue
        out.append('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    return '\n\n'.join(out) + '\n'


def slug(name):
    return re.sub(r'\W+', '_', name).strip('_')


def prepare(variant, p):
    dst = os.path.join(WORK, 'run', variant, slug(p['name']))
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(extract(p['repo'], p['commit']), dst)
    for where, fake in p.get('stubs', []):
        shutil.rmtree(os.path.join(dst, where), ignore_errors=True)
        shutil.copytree(os.path.join(H, 'fakes', fake), os.path.join(dst, where))
    script = p['script']
    if script.endswith('.ipynb'):
        text = notebook_to_script(os.path.join(dst, script))
        script = script[:-len('.ipynb')] + '.py'
        open(os.path.join(dst, script), 'w').write(text)
    for f, old, new in p['patches']:
        fp = os.path.join(dst, f)
        t = open(fp).read()
        assert old in t, (p['name'], f, old)
        open(fp, 'w').write(t.replace(old, new))
    if variant.startswith('onef'):
        for root, _, files in os.walk(dst):
            for f in files:
                if f.endswith('.py'):
                    fp = os.path.join(root, f)
                    t = open(fp, errors='surrogateescape').read()
                    open(fp, 'w', errors='surrogateescape').write(rewrite_imports(t))
    return dst, script


def main():
    variant, python = sys.argv[1], sys.argv[2]
    only = sys.argv[3:]
    timeout = int(os.environ.get('PROGRAM_TIMEOUT', '180'))
    env = dict(os.environ)
    onef_repo = env.get('ONEF_REPO', os.path.dirname(os.path.dirname(H)))
    env['PYTHONPATH'] = os.pathsep.join([os.path.join(H, 'fakes')] + ([onef_repo] if variant.startswith('onef') else []))
    env['MPLBACKEND'] = 'Agg'
    env['OMP_NUM_THREADS'] = env['OPENBLAS_NUM_THREADS'] = '1'
    env['PYTHONWARNINGS'] = 'ignore'
    results = []
    for p in PROGRAMS:
        if only and not any(o in p['name'] for o in only):
            continue
        cwd, script = prepare(variant, p)
        args = p['args'].format(data=D).split()
        t0 = time.time()
        cmd = ['nice', '-n', '10', 'timeout', str(timeout), python, script] + args
        r = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           errors='replace')
        dt = time.time() - t0
        out = r.stdout + r.stderr
        open(os.path.join(cwd, 'log.txt'), 'w').write(out)
        ok = r.returncode == 0
        err = '' if ok else ('timeout after %ds' % timeout if r.returncode == 124 else first_error(out))
        results.append((p['name'], ok, dt, err))
        print('%-36s %-4s %6.1fs %s' % (p['name'], 'ok' if ok else 'FAIL', dt, err), flush=True)
    path = os.path.join(WORK, 'results-%s.tsv' % variant)
    old = {}
    if only and os.path.exists(path):        # a partial run updates its rows, keeps the others
        for line in open(path):
            old[line.split('\t')[0]] = line
    for r in results:
        old[r[0]] = '%s\t%s\t%.1f\t%s\n' % (r[0], 'ok' if r[1] else 'FAIL', r[2], r[3].replace('\t', ' '))
    order = [p['name'] for p in PROGRAMS]
    old = {n: line for n, line in old.items() if n in order}   # programs since dropped
    with open(path, 'w') as f:
        for n in sorted(old, key=order.index):
            f.write(old[n])
    print('%d of %d run' % (sum(r[1] for r in results), len(results)))


if __name__ == '__main__':
    main()
