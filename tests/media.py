"""Small videos the tests make with PyAV."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def scene(frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A moving, textured RGB clip [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 4 + 2, width // 4 + 2, 3)).astype(np.float32)
    import cv2
    tex = cv2.resize(base, (width + 2 * frames, height), interpolation=cv2.INTER_CUBIC).clip(0, 255)
    return np.stack([tex[:, 2 * t:2 * t + width] for t in range(frames)]).astype(np.uint8)


def write(path, frames, fps=24, codec="libx264", pix_fmt="yuv420p", times=None, rotation=None, audio=False,
          options=None):
    """Encode RGB frames; ``times`` (seconds) gives variable frame rate; ``rotation`` sets display rotation."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        s.time_base = tb
        s.codec_context.time_base = tb
        if options:
            s.options = options
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=44100) if audio else None
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            t = times[i] if times is not None else i / fps
            frame.pts, frame.time_base = int(round(t * 1000)), tb
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            _sine(c, a, len(frames) / fps)


def write_audio_only(path, seconds=1.0):
    with av.open(str(path), "w") as c:
        _sine(c, c.add_stream("aac", rate=44100), seconds)


def _sine(container, stream, seconds):
    rate, n = 44100, 1024
    t = 0
    total = int(seconds * rate)
    while t < total:
        x = (0.2 * np.sin(2 * np.pi * 440 * (np.arange(t, t + n) / rate))).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(x, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, t
        for p in stream.encode(frame):
            container.mux(p)
        t += n
    for p in stream.encode():
        container.mux(p)


def decode(path):
    """(RGB frames, frame times, audio sample count, fps) of a file, as a viewer sees them."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames, times = [], []
        for f in c.decode(v):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
        fps = float(v.average_rate)
    samples = 0
    with av.open(str(path)) as c:
        if c.streams.audio:
            samples = sum(f.samples for f in c.decode(audio=0))
    return np.stack(frames), np.array(times), samples, fps


def photo(width: int = 1280, height: int = 720, seed: int = 0) -> np.ndarray:
    """A photo-like still, RGB uint8 [H, W, 3]: detail at every scale (noise summed over octaves, as natural
    images have), with edges (discs and bars); made here, so no test needs a real photo to pan over."""
    import cv2
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 8):
        cells = 2 ** octave
        grid = rng.standard_normal((cells * height // width + 2, cells + 2, 3)).astype(np.float32)
        img += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) * (0.8 ** octave)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    for _ in range(40):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(8, height // 6)), colour, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(10, width // 5)), y + int(rng.integers(4, 30))), colour, -1)
    return img.clip(0, 255).astype(np.uint8)


def png_bomb(path, width: int, height: int) -> Path:
    """A 1-bit grey PNG declaring ``width`` x ``height``: tens of KB on disk, gigabytes once decoded to RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path
