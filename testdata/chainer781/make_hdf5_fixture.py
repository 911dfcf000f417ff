"""Write a Chainer 7.8.1 HDF5 file for the serializer tests.

Run with the reference venv (h5py installed there):
    /work/venv-chainer/bin/python make_hdf5_fixture.py [outdir]
Writes into outdir (default: this file's folder):
  model.h5   save_hdf5 of the Chain below after one Adam step (BatchNormalization's
             running statistics and N included; `lazy` never initialized: None)
  model.npz  save_npz of the same model: the values the .h5 must give
  adam.h5    save_hdf5 of the Adam optimizer after that step
Only Chainer's public API is called.
"""
import os
import sys

import numpy as np
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import serializers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))


class Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(1, 2, 3)
            self.bn = L.BatchNormalization(2)
            self.fc = L.Linear(8, 3)
            self.lazy = L.Linear(None, 2)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))))


rng = np.random.RandomState(781)
model = Net()
optimizer = chainer.optimizers.Adam()
optimizer.setup(model)
x = rng.randn(4, 1, 4, 4).astype(np.float32)
loss = F.sum(model(x) ** 2)
model.cleargrads()
loss.backward()
optimizer.update()
serializers.save_hdf5(os.path.join(OUT, 'model.h5'), model)
serializers.save_npz(os.path.join(OUT, 'model.npz'), model)
serializers.save_hdf5(os.path.join(OUT, 'adam.h5'), optimizer)
