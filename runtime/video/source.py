"""Reading videos with PyAV (FFmpeg): RGB frames with their timestamps, rotation applied.

Decodes the first video stream (or the one asked for) to RGB24, whatever its bit depth, and returns
per-frame times so that variable frame rate survives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from m3ddm.errors import InputError, first_line


class VideoError(InputError):
    """The video cannot be read or written; the message is one line for the user."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("PyAV is not installed: pip install av") from None
    return av


@dataclass
class VideoInfo:
    path: str
    width: int  # as displayed (rotation applied)
    height: int
    fps: float  # average frame rate
    frames: int = 0  # decoded frames (0 until read)
    duration: float = 0.0
    rotation: int = 0  # counter-clockwise degrees applied to the decoded frames
    pix_fmt: str = ""
    codec: str = ""
    has_audio: bool = False
    stream_index: int = 0
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _open_input(path):
    av = _av()
    path = Path(path)
    if not path.exists():
        raise VideoError(f"input {path} does not exist")
    if path.is_dir():
        raise VideoError(f"input {path} is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"input {path} is empty (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except Exception as exc:
        raise VideoError(f"cannot open {path} as a video: {first_line(exc)}") from None


def _video_stream(container, path, index):
    streams = container.streams.video
    if not streams:
        raise VideoError(f"{path} has no video stream" + (" (audio only)" if container.streams.audio else ""))
    if index is None:
        return streams[0]
    if not 0 <= index < len(streams):
        raise VideoError(f"{path} has {len(streams)} video stream(s); there is no video stream {index}")
    return streams[index]


def _display(frame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    k = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """The pixel budget, for every frame read or written: ``what`` of width x height past it is refused."""
    if max_pixels and width * height > max_pixels:
        raise VideoError(f"{what} of {width}x{height} exceed the pixel budget of {max_pixels} pixels (--max-pixels)")


def iter_frames(path, stream: int | None = None, rgb: bool = True,
                max_pixels: int | None = None) -> Iterator[tuple[np.ndarray, float, int]]:
    """(RGB uint8 [H, W, 3] as displayed, time in seconds, rotation) per decoded frame.

    ``rgb=False`` skips the colour conversion and yields None for the picture (a cheap counting pass); a set
    of frame indices converts only those frames (the others: None).
    ``max_pixels`` refuses frames larger than that before they are decoded: the declared size is checked
    first and the decoder itself is told the limit, so a small file declaring a huge picture costs nothing.
    """
    container = _open_input(path)
    try:
        vs = _video_stream(container, path, stream)
        vs.thread_type = "AUTO"
        if max_pixels:
            check_pixels(vs.codec_context.width, vs.codec_context.height, max_pixels, f"{path}: frames")
            vs.codec_context.options = {**vs.codec_context.options, "max_pixels": str(int(max_pixels))}
        last_t = None
        convert = (lambda k: rgb) if isinstance(rgb, bool) else (lambda k: k in rgb)
        try:
            for index, frame in enumerate(container.decode(vs)):
                check_pixels(frame.width, frame.height, max_pixels, f"{path}: frames")
                t = frame.time
                if t is None:  # no pts: count on from the last one at the average rate
                    rate = float(vs.average_rate or vs.guessed_rate or 30)
                    t = 0.0 if last_t is None else last_t + 1.0 / rate
                last_t = t
                yield (_display(frame) if convert(index) else None), float(t), int(getattr(frame, "rotation", 0) or 0)
        except VideoError:
            raise
        except Exception as exc:  # corrupt data after some frames: keep what decoded, if anything
            if last_t is None:
                raise VideoError(f"cannot decode {path}: {first_line(exc)}") from None
    finally:
        container.close()


def packet_times(path, stream: int | None = None) -> np.ndarray | None:
    """The presentation times of the video stream's packets, sorted: what decoding would give, read from the
    container alone (a second or less for a long video, against a full decode). None where it cannot be
    trusted (a packet without a time, flagged corrupt or to be discarded, as edit lists do): callers decode
    then. Callers still check it against the frames they decode; a decoder may drop a packet it cannot read.
    """
    container = _open_input(path)
    try:
        vs = _video_stream(container, path, stream)
        pts = []
        for packet in container.demux(vs):
            if packet.size == 0:  # the demuxer's closing empty packet
                continue
            if packet.pts is None or packet.is_corrupt or packet.is_discard:
                return None
            pts.append(packet.pts)
        if not pts:
            return None
        base = vs.time_base
        return np.array(sorted(float(p * base) for p in pts), dtype=np.float64)
    except VideoError:
        raise
    except Exception:  # a damaged container: the decoding pass says what is wrong, in its own words
        return None
    finally:
        container.close()


def probe(path, stream: int | None = None) -> VideoInfo:
    container = _open_input(path)
    try:
        vs = _video_stream(container, path, stream)
        rate = vs.average_rate or vs.guessed_rate
        cc = vs.codec_context
        return VideoInfo(str(path), cc.width, cc.height, float(rate) if rate else 0.0, pix_fmt=cc.pix_fmt or "",
                         codec=cc.name, has_audio=bool(container.streams.audio), stream_index=vs.index)
    finally:
        container.close()


def read_video(path, stream: int | None = None, max_frames: int | None = None,
               max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """All frames (RGB uint8 [T, H, W, 3], as displayed) and the video's info, times included."""
    info = probe(path, stream)
    frames, times, rotation = [], [], 0
    for rgb, t, rot in iter_frames(path, stream, max_pixels=max_pixels):
        if frames and rgb.shape != frames[0].shape:
            raise VideoError(f"{path}: frame size changes mid-stream ({frames[0].shape[1]}x{frames[0].shape[0]} "
                             f"to {rgb.shape[1]}x{rgb.shape[0]}), which is not supported")
        frames.append(rgb)
        times.append(t)
        rotation = rot
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise VideoError(f"{path} has no decodable video frames")
    info.frames = len(frames)
    info.height, info.width = frames[0].shape[:2]
    info.rotation = rotation
    info.times = np.asarray(times, dtype=np.float64)
    info.fps = info.fps or fps_from_times(info.times)
    info.duration = float(info.times[-1] - info.times[0] + 1.0 / max(info.fps, 1e-6)) if len(times) else 0.0
    return np.stack(frames), info


def fps_from_times(times: np.ndarray) -> float:
    """Average frame rate from frame times, for streams that declare none (30 if it cannot be told)."""
    if len(times) < 2:
        return 30.0
    span = times[-1] - times[0]
    return float((len(times) - 1) / span) if span > 0 else 30.0
