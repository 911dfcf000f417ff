"""Stand-in for scikit-image (not installed here): chainer-pix2pix imports skimage.io but does not
call it on the path the harness runs."""
