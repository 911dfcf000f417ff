"""Tiny stand-in for librosa (not installed): reads a 16-bit PCM wav with the standard
library and makes a crude mel-like spectrogram of the right shape, for Chainer's wavenet example."""
import types
import wave
import numpy as np


def load(path, sr=22050, res_type=None):
    with wave.open(path, 'rb') as f:
        data = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
    return data.astype(np.float32) / 32768.0, sr


def _trim(y, top_db=60):
    return y, (0, len(y))


def _melspectrogram(y, sr=22050, n_fft=2048, hop_length=512, n_mels=128, **kw):
    n_frames = 1 + len(y) // hop_length
    padded = np.pad(y, (n_fft // 2, n_fft // 2 + hop_length))
    frames = np.stack([padded[i * hop_length:i * hop_length + n_fft] for i in range(n_frames)], 1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    idx = np.linspace(0, power.shape[0] - 1, n_mels).astype(int)
    return power[idx].astype(np.float32)


def power_to_db(s, ref=1.0, top_db=80.0):
    r = ref(s) if callable(ref) else ref
    return (10 * np.log10(np.maximum(s, 1e-10)) - 10 * np.log10(max(r, 1e-10))).astype(np.float32)


def _write_wav(path, y, sr):
    with wave.open(path, 'wb') as f:
        f.setnchannels(1); f.setsampwidth(2); f.setframerate(sr)
        f.writeframes((np.clip(y, -1, 1) * 32767).astype(np.int16).tobytes())


effects = types.SimpleNamespace(trim=_trim)
feature = types.SimpleNamespace(melspectrogram=_melspectrogram)
output = types.SimpleNamespace(write_wav=_write_wav)
