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
            cv2.rectangle(img, (x, y), (x + int(rng.integers(10, width // 5)), y + int(rng.integers(4, 30))),
                          colour, -1)
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


def external_reference(path, target) -> Path:
    """A QuickTime file whose video samples lie in ``target`` (a video file beside it), named by a Mac alias
    data reference (dref 'alis', as FFmpeg's mov demuxer reads them): ``target``'s own index without its data.
    A reader that follows external references shows ``target``'s frames; one that does not has none."""
    import struct

    target = Path(target)
    data = target.read_bytes()

    def boxes(blob):
        i = 0
        while i < len(blob):
            size, kind = struct.unpack(">I4s", blob[i:i + 8])
            yield kind, blob[i + 8:i + size]
            i += size

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    name = b"/" + target.name.encode()
    # version/flags 0 (not self-contained); 150 bytes of alias fields: volume, file name, from/to levels 1/1
    # (the target in the same folder); then the absolute-path tag (2) and the end tag (-1).
    alias = (bytes(4) + bytes(10) + bytes(1 + 27) + bytes(12) + bytes([len(target.name)])
             + target.name.encode()[:63].ljust(63, b"\0") + bytes(16) + struct.pack(">HH", 1, 1) + bytes(16)
             + struct.pack(">HH", 2, len(name)) + name + (b"\0" if len(name) % 2 else b"") + struct.pack(">hH", -1, 0))
    dref = bytes(4) + struct.pack(">I", 1) + box(b"alis", alias)

    def rewrite(blob):
        return b"".join(box(kind, dref if kind == b"dref" else rewrite(payload)
                            if kind in (b"moov", b"trak", b"mdia", b"minf", b"dinf") else payload)
                        for kind, payload in boxes(blob))

    top = dict(boxes(data))
    path = Path(path)
    path.write_bytes(box(b"ftyp", top[b"ftyp"]) + rewrite(box(b"moov", top[b"moov"])))
    return path


SECRET_RGB = (250, 0, 0)


def reading_traps(folder) -> dict:
    """Files that make a reader which follows names, protocols or references show another file: ``secret.mp4``
    (pure red frames, seen at once in any output) and ``clip.mp4`` (a textured clip) beside ``traps``, each of
    which leads to the secret when FFmpeg is let to follow it. The protocol-named ones hold the clip's bytes:
    read as the files they are, they show the clip. Opened with the folder as the working directory."""
    folder = Path(folder)
    write(folder / "secret.mp4", np.full((8, 48, 64, 3), SECRET_RGB, np.uint8), fps=8)
    write(folder / "clip.mp4", scene(8, 64, 48, seed=7), fps=8)
    (folder / "sub").mkdir(exist_ok=True)
    playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n../secret.mp4\n#EXT-X-ENDLIST\n"
    script = "ffconcat version 1.0\nfile secret.mp4\n"
    (folder / "sub" / "play.m3u8").write_text(playlist)
    (folder / "list.ffconcat").write_text(script)
    (folder / "list.mp4").write_text(script)
    external_reference(folder / "dref.mov", folder / "secret.mp4")
    named = ["concat:secret.mp4", "subfile,,start,0,end,0,,:secret.mp4", "file:secret.mp4", "async:secret.mp4",
             "cache:secret.mp4"]
    for name in named:
        (folder / name).write_bytes((folder / "clip.mp4").read_bytes())
    return {"named": named, "followed": ["sub/play.m3u8", "list.ffconcat", "list.mp4"], "external": "dref.mov"}


def shows_secret(frames: np.ndarray) -> bool:
    """Whether any of these RGB frames is the secret's (pure red, to within an encoder's error)."""
    red = (frames[..., 0].astype(int) > 200) & (frames[..., 1] < 40) & (frames[..., 2] < 40)
    return bool((red.reshape(len(frames), -1).mean(axis=1) > 0.2).any())
