"""Runs Chainer v7.8.1's examples (extracted from a Chainer git checkout by run_all.sh) under real
Chainer or onefchainer; none of their code is kept in this repository.

  python3 harness.py VARIANT PYTHON [NAME...]     VARIANT: chainer | onef
Each program is copied to run/VARIANT/<dir>/ (fresh each time), its data-getter calls patched to the
small data of make_data.py / fakes/harness_data.py (both variants), and in the onef variant only its
import lines rewritten to onefchainer. Results go to results-VARIANT.tsv (name, ok, seconds, first error).
"""
import os, re, shutil, subprocess, sys, time

H = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get('EXAMPLES_WORK', '/tmp/onefchainer-examples')   # src/, data/, run/, results
SRC = os.path.join(WORK, 'src', 'examples')
D = os.path.join(WORK, 'data')
HD = "__import__('harness_data')."

# data patches, applied to both variants: (file, old, new)
PATCHES = {
    'cifar': [('train_cifar.py', 'from chainer.datasets import get_cifar10', 'from harness_data import get_cifar10'),
              ('train_cifar_custom_loop.py', 'from chainer.datasets import get_cifar10', 'from harness_data import get_cifar10'),
],
    'static_graph_optimizations/cifar': [
              ('train_cifar.py', 'from chainer.datasets import get_cifar10', 'from harness_data import get_cifar10'),
              ('train_cifar_custom_loop.py', 'from chainer.datasets import get_cifar10', 'from harness_data import get_cifar10'),
],
    'dcgan': [('train_dcgan.py', 'chainer.datasets.get_cifar10(', HD + 'get_cifar10(')],
    'word2vec': [('train_word2vec.py', 'chainer.datasets.get_ptb_words(', HD + 'get_ptb_words('),
                 ('train_word2vec.py', 'chainer.datasets.get_ptb_words_vocabulary(', HD + 'get_ptb_words_vocabulary(')],
    'static_graph_optimizations/ptb': [
                 ('train_ptb_custom_loop.py', 'chainer.datasets.get_ptb_words(', HD + 'get_ptb_words(')],
    'text_classification': [('text_datasets.py', 'path = chainer.dataset.cached_download(url)',
                             "path = os.path.join(%r, 'text', f_name)" % D)],
    'glance': [('glance.py', "mushroomsfile = 'mushrooms.csv'", "mushroomsfile = %r" % os.path.join(D, 'mushrooms.csv')),
               ('glance.py', "(50, 'epoch')", "(1, 'epoch')")],
    'pix2pix': [('train_facade.py', 'data_range=(1, 300)', 'data_range=(1, 4)'),
                ('train_facade.py', 'data_range=(300, 379)', 'data_range=(4, 7)')],
}
COPY_DATA = {'sentiment': 'trees'}


MN = '-e 1 -b 200 -u 50 -d -1'
W2V = '-e 1 -u 10 -b 100 -w 2 -d -1'
TC = '--dataset stsa.binary -e 1 -b 8 -u 10 -d -1'
WN = '--n_loop 1 --n_layer 2 --a_channels 16 --r_channels 8 --s_channels 16 -d -1'
# (name, dir, script, args, stdin); programs of one dir run in this order in one copy
PROGRAMS = [
    ('mnist/train_mnist', 'mnist', 'train_mnist.py', MN, None),
    ('mnist/inference', 'mnist', 'inference.py', '-d -1 -u 50 --snapshot result/snapshot_iter_300', None),
    ('mnist/train_mnist_custom_loop', 'mnist', 'train_mnist_custom_loop.py', MN, None),
    ('mnist/train_mnist_data_parallel', 'mnist', 'train_mnist_data_parallel.py', '-e 1 -b 400 -u 50 --device0 -1 --device1 -1', None),
    ('mnist/train_mnist_data_parallel_updater', 'mnist', 'train_mnist_data_parallel_updater.py', '-e 1 -b 400 -u 50 -j 1 -d -1 -1', None),
    ('mnist/train_mnist_model_parallel', 'mnist', 'train_mnist_model_parallel.py', '-e 1 -b 200 -u 50 --device0 -1 --device1 -1', None),
    ('cifar/train_cifar', 'cifar', 'train_cifar.py', '-e 1 -b 16 -d -1', None),
    ('cifar/train_cifar_custom_loop', 'cifar', 'train_cifar_custom_loop.py', '-e 1 -b 16 -d -1', None),
    ('dcgan/train_dcgan', 'dcgan', 'train_dcgan.py', '-e 1 -b 16 -d -1 --snapshot_interval 4 --display_interval 1', None),
    ('glance/glance', 'glance', 'glance.py', '', None),
    ('memnn/train_memnn', 'memnn', 'train_memnn.py', '%s/babi/qa1_train.txt %s/babi/qa1_test.txt -e 1 -b 10 -u 10 -d -1 -m model' % (D, D), None),
    ('memnn/test_memnn', 'memnn', 'test_memnn.py', 'model %s/babi/qa1_test.txt -d -1' % D, None),
    ('pix2pix/train_facade', 'pix2pix', 'train_facade.py', '-i %s/facade -e 1 -b 1 -d -1 --snapshot_interval 1000 --display_interval 1' % D, None),
    ('reinforcement_learning/dqn_cartpole', 'reinforcement_learning', 'dqn_cartpole.py', '--episodes 3 --replay-start-size 16 -b 8 -u 10 -d -1', None),
    ('reinforcement_learning/ddpg_pendulum', 'reinforcement_learning', 'ddpg_pendulum.py', '--episodes 3 --replay-start-size 16 -b 8 -u 10 -d -1', None),
    ('sentiment/train_sentiment', 'sentiment', 'train_sentiment.py', '--test -e 1 -p 1 -u 10 -b 5 -d -1', None),
    ('sentiment/train_recursive_minibatch', 'sentiment', 'train_recursive_minibatch.py', '-e 1 -p 1 -u 10 -b 5 -d -1', None),
    ('serialization/save', 'serialization', 'save.py', '', None),
    ('serialization/load', 'serialization', 'load.py', '', None),
    ('static_graph/mnist/train_mnist', 'static_graph_optimizations/mnist', 'train_mnist.py', MN, None),
    ('static_graph/mnist/train_mnist_custom_loop', 'static_graph_optimizations/mnist', 'train_mnist_custom_loop.py', MN, None),
    ('static_graph/cifar/train_cifar', 'static_graph_optimizations/cifar', 'train_cifar.py', '-e 1 -b 16 -d -1', None),
    ('static_graph/cifar/train_cifar_custom_loop', 'static_graph_optimizations/cifar', 'train_cifar_custom_loop.py', '-e 1 -b 16 -d -1', None),
    ('static_graph/ptb/train_ptb_custom_loop (recurrent)', 'static_graph_optimizations/ptb', 'train_ptb_custom_loop.py', '-e 1 -b 5 -l 5 -u 10 -d -1 --test', None),
    ('text_classification/train cnn', 'text_classification', 'train_text_classifier.py', TC + ' --model cnn -o result_cnn', None),
    ('text_classification/train bow', 'text_classification', 'train_text_classifier.py', TC + ' --model bow -o result_bow', None),
    ('text_classification/train rnn (recurrent)', 'text_classification', 'train_text_classifier.py', TC + ' --model rnn -o result_rnn', None),
    ('text_classification/run_text_classifier', 'text_classification', 'run_text_classifier.py', '--model-setup result_cnn/args.json -d -1', 'good movie\nawful plot\n'),
    ('vae/train_vae', 'vae', 'train_vae.py', '-e 1 --test -b 50 --dim-h 50 -d -1', None),
    ('wavenet/train', 'wavenet', 'train.py', '-i %s/vctk -b 2 -l 1024 -e 1 --process 1 --prefetch 1 --snapshot_interval 2 %s' % (D, WN), None),
    ('wavenet/generate', 'wavenet', 'generate.py', '-i %s/vctk/wav48/p225/p225_000.wav -m result/snapshot_iter_2 %s' % (D, WN), None),
    ('word2vec/train skipgram hsm', 'word2vec', 'train_word2vec.py', W2V + ' -m skipgram --out-type hsm', None),
    ('word2vec/train skipgram ns', 'word2vec', 'train_word2vec.py', W2V + ' -m skipgram --out-type ns', None),
    ('word2vec/train cbow original', 'word2vec', 'train_word2vec.py', W2V + ' -m cbow --out-type original', None),
    ('word2vec/search', 'word2vec', 'search.py', '--result result', 'w1\nw2\n'),
]

# other options of the same programs (run after the list above, counted apart: names start with '+')
EXTRA = [
    ('+mnist/train_mnist --resume', 'mnist', 'train_mnist.py', MN.replace('-e 1', '-e 2') + ' --resume result/snapshot_iter_300', None),
    ('+mnist/train_mnist --autoload', 'mnist', 'train_mnist.py', MN.replace('-e 1', '-e 3') + ' --autoload', None),
    ('+mnist/train_mnist_custom_loop --resume', 'mnist', 'train_mnist_custom_loop.py', MN.replace('-e 1', '-e 2') + ' --resume result', None),
    ('+cifar/train_cifar cifar100 --early-stopping', 'cifar', 'train_cifar.py', '-e 2 -b 16 -d -1 --dataset cifar100 --early-stopping validation/main/loss', None),
    ('+cifar/train_cifar_custom_loop --test --resume', 'cifar', 'train_cifar_custom_loop.py', '-e 2 -b 16 -d -1 --test --resume result', None),
    ('+dcgan/train_dcgan --dataset images', 'dcgan', 'train_dcgan.py', '-e 1 -b 8 -d -1 --dataset %s/images --snapshot_interval 4 --display_interval 1' % D, None),
    ('+memnn/train_memnn --sentence-repr pe', 'memnn', 'train_memnn.py', '%s/babi/qa1_train.txt %s/babi/qa1_test.txt -e 1 -b 10 -u 10 -d -1 -m model_pe --sentence-repr pe' % (D, D), None),
    ('+reinforcement_learning/dqn_cartpole double_dqn', 'reinforcement_learning', 'dqn_cartpole.py', '--episodes 3 --replay-start-size 16 -b 8 -u 10 -d -1 --target-type double_dqn', None),
    ('+text_classification/train cnn --char-based', 'text_classification', 'train_text_classifier.py', TC + ' --model cnn --char-based -o result_char', None),
    ('+vae/train_vae --binary -k 2', 'vae', 'train_vae.py', '-e 1 --test -b 50 --dim-h 50 -d -1 --binary -k 2 -o results_b', None),
    ('+imagenet/compute_mean', 'imagenet', 'compute_mean.py', '%s/imagenet/train.txt -R %s/imagenet -o mean.npy' % (D, D), None),
] + [('+imagenet/train_imagenet -a %s' % a, 'imagenet', 'train_imagenet.py',
      '%s/imagenet/train.txt %s/imagenet/val.txt -a %s -B 2 -b 2 -E 1 -j 1 -R %s/imagenet -o result_%s' % (D, D, a, D, a), None)
     for a in ('nin', 'alex', 'googlenet', 'googlenetbn', 'resnet50', 'resnext50')] + [
    ('+word2vec/train cbow ns', 'word2vec', 'train_word2vec.py', W2V + ' -m cbow --out-type ns', None),
]


def rewrite_imports(text):
    """Only import lines change: chainer -> onefchainer (chainerx -> onefchainer's stand-in)."""
    def one(m):
        ind, line = m.group(1), m.group(2)
        m2 = re.match(r'import chainer((?:\.\w+)*)(\s+as\s+\w+)?\s*$', line)
        if m2:
            sub, alias = m2.group(1), m2.group(2)
            if alias:
                return ind + 'import onefchainer%s%s' % (sub, alias)
            if sub:   # `import chainer.x.y` binds `chainer`
                return ind + 'import onefchainer%s; import onefchainer as chainer' % sub
            return ind + 'import onefchainer as chainer'
        m2 = re.match(r'from chainer((?:\.\w+)*) import (.*)$', line)
        if m2:
            return ind + 'from onefchainer%s import %s' % (m2.group(1), m2.group(2))
        if re.match(r'import chainerx\s*$', line):
            return ind + 'from onefchainer import chainerx'
        return m.group(0)
    return re.sub(r'(?m)^([ \t]*)((?:import|from) chainerx?\b.*)$', one, text)


def prepare(variant, d):
    dst = os.path.join(WORK, 'run', variant, d)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(os.path.join(SRC, d), dst)
    for f, old, new in PATCHES.get(d, []):
        p = os.path.join(dst, f)
        t = open(p).read()
        assert old in t, (d, f, old)
        open(p, 'w').write(t.replace(old, new))
    if d in COPY_DATA:
        shutil.copytree(os.path.join(D, COPY_DATA[d]), os.path.join(dst, COPY_DATA[d]))
    if variant == 'onef':
        for root, _, files in os.walk(dst):
            for f in files:
                if f.endswith('.py'):
                    p = os.path.join(root, f)
                    t = open(p).read()
                    open(p, 'w').write(rewrite_imports(t))
    return dst


def first_error(out):
    lines = [l for l in out.splitlines() if l.strip()]
    for i in range(len(lines) - 1, -1, -1):   # last traceback's final line
        if lines[i].startswith('Traceback'):
            for l in lines[i + 1:]:
                if not l.startswith(' ') and not l.startswith('Traceback'):
                    return l.strip()[:300]
    return (lines[-1].strip()[:300] if lines else 'no output')


def main():
    variant, python = sys.argv[1], sys.argv[2]
    only = sys.argv[3:]
    timeout = int(os.environ.get('EXAMPLE_TIMEOUT', '120'))
    env = dict(os.environ)
    onef_repo = env.get('ONEF_REPO', os.path.dirname(os.path.dirname(H)))
    env['PYTHONPATH'] = os.pathsep.join([os.path.join(H, 'fakes')] + ([onef_repo] if variant == 'onef' else []))
    env['CHAINER_DATASET_ROOT'] = os.path.join(D, 'chainer_root')
    env['MPLBACKEND'] = 'Agg'
    env['OMP_NUM_THREADS'] = env['OPENBLAS_NUM_THREADS'] = '1'
    env['PYTHONWARNINGS'] = 'ignore'
    prepared = set()
    out_tsv = os.path.join(WORK, 'results-%s.tsv' % variant)
    results = []
    for name, d, script, args, stdin in PROGRAMS + EXTRA:
        if only and not any(o in name for o in only):
            continue
        if d not in prepared:
            cwd = prepare(variant, d)
            prepared.add(d)
        cwd = os.path.join(WORK, 'run', variant, d)
        t0 = time.time()
        cmd = ['nice', '-n', '10', 'timeout', str(timeout), python, script] + args.split()
        p = subprocess.run(cmd, cwd=cwd, env=env, input=stdin or '', capture_output=True, text=True)
        dt = time.time() - t0
        out = p.stdout + p.stderr
        open(os.path.join(cwd, 'log-' + re.sub(r'\W+', '_', name) + '.txt'), 'w').write(out)
        ok = p.returncode == 0
        err = '' if ok else ('timeout after %ds' % timeout if p.returncode == 124 else first_error(out))
        results.append((name, ok, dt, err))
        print('%-50s %-4s %6.1fs %s' % (name, 'ok' if ok else 'FAIL', dt, err), flush=True)
    mode = 'w' if not only else 'a'
    with open(out_tsv, mode) as f:
        for r in results:
            f.write('%s\t%s\t%.1f\t%s\n' % (r[0], 'ok' if r[1] else 'FAIL', r[2], r[3].replace('\t', ' ')))
    print('%d of %d run' % (sum(r[1] for r in results), len(results)))


if __name__ == '__main__':
    main()
