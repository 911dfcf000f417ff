"""The public Chainer programs the harness runs: where each one is (repository, commit, path), how it
is run (arguments), and which small data it gets.  None of their code is kept here; harness.py
extracts it from a git copy of each repository at run time.

Each entry:
  name      what the table calls it
  repo      owner/name on GitHub, commit: the commit measured
  script    path of the program in the repository; a .ipynb is turned into a script (its code
            cells in order, IPython magics and shell lines dropped)
  args      command-line arguments (few iterations, CPU)
  patches   (file, old, new) text replacements, applied under both Chainer and onefchainer: the
            data getters swapped for outside_data's small random stand-ins (same shapes, dtypes,
            value ranges, fewer examples), sizes and epochs made small, GPU ids made CPU.
            Nothing else in a program changes except (for onefchainer) its import lines.
  data      files made by make_data.py that the program reads ('' if none)
  stubs     (folder in the repository, folder in fakes/): stand-ins copied into a git submodule
            the copy lacks (optional)
  what      what kind of program it is
"""

OD = "__import__('outside_data')."   # the small-data module in fakes/

PROGRAMS = [
    dict(name='chainer-gan-lib dcgan', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm dcgan --gpu -1 --batchsize 8 --max_iter 3 --snapshot_interval 3 '
              '--evaluation_interval 1000 --display_interval 1 --out result',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='GAN, custom updater, Trainer (CIFAR-10)'),
    dict(name='chainer-gan-lib wgan_gp', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm wgan_gp --n_dis 2 --gpu -1 --batchsize 8 --max_iter 2 --snapshot_interval 1000 '
              '--evaluation_interval 1000 --display_interval 1 --out result_wgp',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='WGAN-GP: gradient penalty by double backprop'),
    dict(name='chainer-gan-lib stdgan sndcgan', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm stdgan --architecture sndcgan --n_dis 1 --gpu -1 --batchsize 8 --max_iter 2 '
              '--snapshot_interval 1000 --evaluation_interval 1000 --display_interval 1 --out result_sn',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='spectral-normalized links written on Chainer internals'),
    dict(name='chainer-gan-lib dfm', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm dfm --n_dis 1 --gpu -1 --batchsize 8 --max_iter 2 --snapshot_interval 1000 '
              '--evaluation_interval 1000 --display_interval 1 --out result_dfm',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='denoising feature matching: a third network'),
    dict(name='chainer-gan-lib minibatch_discrimination', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm minibatch_discrimination --n_dis 1 --gpu -1 --batchsize 8 --max_iter 2 --snapshot_interval 1000 '
              '--evaluation_interval 1000 --display_interval 1 --out result_minibatch_discrimination',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='minibatch-discrimination layer'),
    dict(name='chainer-gan-lib cramer', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm cramer --n_dis 1 --gpu -1 --batchsize 8 --max_iter 2 --snapshot_interval 1000 '
              '--evaluation_interval 1000 --display_interval 1 --out result_cramer',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='Cramer GAN: critic with gradient penalty'),
    dict(name='chainer-gan-lib dragan', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='train.py',
         args='--algorithm dragan --n_dis 1 --gpu -1 --batchsize 8 --max_iter 2 --snapshot_interval 1000 '
              '--evaluation_interval 1000 --display_interval 1 --out result_dragan',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='DRAGAN: perturbed-input gradient penalty'),
    dict(name='chainer-gan-lib progressive', repo='pfnet-research/chainer-gan-lib',
         commit='cf9efba5b166c07bfd56be1bd4aa9a662dd54bd1', script='progressive/train.py',
         stubs=[('common/inception', 'inception')],
         args='--gpu -1 --batchsize 4 --max_iter 4 --stage_interval 1 --snapshot_interval 1000 '
              '--evaluation_interval 1000 --out_image_interval 1000 --display_interval 1 --out result_pg',
         patches=[('common/dataset.py', 'chainer.datasets.get_cifar10(', OD + 'get_cifar10(')],
         data='', what='progressive growing GAN: stages, gradient penalty, smoothed generator'),
    dict(name='chainer-pix2pix facade', repo='pfnet-research/chainer-pix2pix',
         commit='e04654d02bec406ede1ea093a4e5959b6c33d63c', script='train_facade.py',
         args='-i {data}/facade -e 1 -b 1 -g -1 --snapshot_interval 1000 --display_interval 1',
         patches=[('train_facade.py', 'data_range=(1,300)', 'data_range=(1,4)'),
                  ('train_facade.py', 'data_range=(300,379)', 'data_range=(4,7)')],
         data='facade', what='pix2pix, encoder/decoder/discriminator updater'),
    dict(name='chainer-att-seq2seq', repo='ken-matsui/chainer-att-seq2seq',
         commit='be0205a8171c300b7adbad719598955066ba4bb2', script='train.py',
         args='-e 1 -b 4 -es 16 -n 16 -d 6 -v {data}/s2s/vocab.txt -i {data}/s2s/dataid.txt -o result/',
         patches=[], data='s2s', what='seq2seq with attention, hand-written loop'),
    dict(name='chainer-attention-nmt', repo='hkiyomaru/chainer-attention-nmt',
         commit='84e0c6041ff7ba42d3d10d03af916aad76965ce5', script='train.py',
         args='{data}/nmt/train.src {data}/nmt/train.tgt {data}/nmt/vocab.src {data}/nmt/vocab.tgt '
              '--validation-source {data}/nmt/valid.src --validation-target {data}/nmt/valid.tgt '
              '-b 4 -e 1 -g -1 --encoder-unit 16 --encoder-layer 1 --decoder-unit 16 --attention-unit 16 '
              '--maxout-unit 16 --log-interval 1 --validation-interval 4',
         patches=[], data='nmt', what='attention seq2seq with NStepBiLSTM, Trainer, BLEU extension'),
    dict(name='rnnlm_chainer (LSTM LM)', repo='soskek/rnnlm_chainer',
         commit='66a38569aeb9a9a2c260cd0068429da37c6a4e62', script='train.py',
         args='--test -e 1 -b 5 -l 5 -u 20 --gpu -1',
         patches=[('train.py', 'chainer.datasets.get_ptb_words(', OD + 'get_ptb_words(')],
         data='', what='LSTM language model, truncated BPTT loop (PTB)'),
    dict(name='chainer-iaf (VAE + IAF flow)', repo='nel215/chainer-iaf',
         commit='d47879de826ee0cac4ff81dbf3c36573bd1c64ed', script='train.py', args='',
         patches=[('train.py', 'from chainer.datasets import get_mnist', 'from outside_data import get_mnist'),
                  ('train.py', 'gpu = 0', 'gpu = -1'), ('train.py', 'n_epoch = 50', 'n_epoch = 1')],
         data='', what='VAE with inverse autoregressive flow, Trainer (MNIST)'),
    dict(name='chainer-gan-trainer', repo='hvy/chainer-gan-trainer',
         commit='e06f900041383b07caaba54b5fbd2afbf1af84fb', script='train.py',
         args='--gpu -1 --epochs 1 --batch-size 32 --nz 10',
         patches=[('train.py', 'datasets.get_mnist(', OD + 'get_mnist(')],
         data='', what='GAN with custom iterator, updater and extension (MNIST)'),
    dict(name='chainer-handson 1 training loop', repo='mitmul/chainer-handson',
         commit='0cd4b2ad175264e5c045fd59d14b12cfc080dc79', script='1-Write-the-training-loop_en.ipynb', args='',
         patches=[('1-Write-the-training-loop_en.py', 'mnist.get_mnist(', OD + 'get_mnist('),
                  ('1-Write-the-training-loop_en.py', 'max_epoch = 10', 'max_epoch = 1'),
                  ('1-Write-the-training-loop_en.py', 'gpu_id = 0', 'gpu_id = -1')],
         data='', what='hands-on notebook: MLP and a hand-written training loop'),
    dict(name='chainer-handson 2 Trainer', repo='mitmul/chainer-handson',
         commit='0cd4b2ad175264e5c045fd59d14b12cfc080dc79', script='2-Try-Trainer-class_en.ipynb', args='',
         patches=[('2-Try-Trainer-class_en.py', 'mnist.get_mnist(', OD + 'get_mnist('),
                  ('2-Try-Trainer-class_en.py', 'max_epoch = 10', 'max_epoch = 1'),
                  ('2-Try-Trainer-class_en.py', 'gpu_id = 0', 'gpu_id = -1'),
                  ('2-Try-Trainer-class_en.py', 'model_epoch-10', 'model_epoch-1')],
         data='', what='hands-on notebook: Trainer, extensions, snapshot, reload'),
    dict(name='chainer-handson 3 own network', repo='mitmul/chainer-handson',
         commit='0cd4b2ad175264e5c045fd59d14b12cfc080dc79', script='3-Write-your-own-network_en.ipynb', args='',
         patches=[('3-Write-your-own-network_en.py', 'cifar.get_cifar10(', OD + 'get_cifar10('),
                  ('3-Write-your-own-network_en.py', 'gpu_id = 0', 'gpu_id = -1'),
                  ('3-Write-your-own-network_en.py', 'max_epoch=100', 'max_epoch=1'),
                  ('3-Write-your-own-network_en.py', 'max_epoch=20', 'max_epoch=1')],
         data='', what='hands-on notebook: CNNs on CIFAR-10 with the Trainer'),
    dict(name='chainer-handson 4 dataset class', repo='mitmul/chainer-handson',
         commit='0cd4b2ad175264e5c045fd59d14b12cfc080dc79', script='4-Write-your-own-dataset-class_en.ipynb', args='',
         patches=[('4-Write-your-own-dataset-class_en.py', 'cifar.get_cifar10(', OD + 'get_cifar10('),
                  ('4-Write-your-own-dataset-class_en.py', 'gpu_id = 0', 'gpu_id = -1'),
                  ('4-Write-your-own-dataset-class_en.py', 'max_epoch=100', 'max_epoch=1')],
         data='', what='hands-on notebook: a DatasetMixin with augmentation'),
    dict(name='chainer-wideresnet (CIFAR WRN)', repo='davda54/chainer-wideresnet',
         commit='f1c53c79ffa4f239ac5882a7a2c7b6acce466364', script='wideresnet.ipynb', args='',
         patches=[('wideresnet.py', 'ch.datasets.get_cifar10(', OD + 'get_cifar10('),
                  ('wideresnet.py', 'BATCH_SIZE = 128', 'BATCH_SIZE = 16'),
                  ('wideresnet.py', 'DEPTH = 40', 'DEPTH = 10'),
                  ('wideresnet.py', 'WIDTH_FACTOR = 4', 'WIDTH_FACTOR = 1'),
                  ('wideresnet.py', 'EPOCHS = 200', 'EPOCHS = 1'),
                  ('wideresnet.py', 'GPU_ID = 0', 'GPU_ID = -1'),
                  ('wideresnet.py', 'split_dataset_random(train, 5000,', 'split_dataset_random(train, 16,'),
                  ('wideresnet.py', 'device=0', 'device=-1'),
                  ('wideresnet.py', '.to_gpu(GPU_ID)', '.to_device(GPU_ID)'),
                  ('wideresnet.py', 'cuda.to_gpu(batch)', 'cuda.to_cpu(batch)')],
         data='', what='Wide ResNet, Sequential, MultiprocessIterator, Trainer'),
    dict(name='ChainerStudy custom Function', repo='yangzonglin1994/ChainerStudy',
         commit='01786bfe37b21791f31b2efc355b6fcdd7ff2402', script='train.py', args='',
         patches=[('train.py', 'iter_num = 10000', 'iter_num = 200')],
         data='', what='old-style chainer.Function subclasses and Links'),
    dict(name='chainer-capsnet', repo='pfnet-research/chainer-capsnet',
         commit='457fe22460fb09acf85af95d81e8b565ca94c8ea', script='train.py',
         args='-e 1 -b 64 -g -1 --reconstruct --save capsnet.npz',
         patches=[('train.py', 'chainer.datasets.get_mnist(', OD + 'get_mnist(')],
         data='', what='capsule network, dynamic routing, custom loop (MNIST)'),
    dict(name='chainer-VAE', repo='YosukeHiguchi/chainer-VAE',
         commit='43f31a90ec6f6d47a154f498a2d1b1d2a55e5a16', script='train_vae.py',
         args='-g -1 -e 1 -b 64 -o model',
         patches=[('train_vae.py', 'chainer.datasets.get_mnist(', OD + 'get_mnist(')],
         data='', what='VAE, custom updater, dump_graph (MNIST)'),
]
