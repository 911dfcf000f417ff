"""Stand-in for the part of NLTK that chainer-attention-nmt calls (nltk.translate.bleu_score)."""
