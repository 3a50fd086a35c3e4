"""Video in and out with PyAV (FFmpeg): reading (source.py: frames, timestamps, rotation) and writing (sink.py:
encoding at the source timestamps, audio kept, a temporary file renamed into place, so a failed run never
leaves a partial output and never touches the input)."""
from runtime.video.sink import EncodeOptions, VideoWriter, check_output_path, write_video
from runtime.video.source import (
    MEDIA_DEMUXERS,
    VideoError,
    VideoInfo,
    check_input,
    duration,
    fps_from_times,
    iter_frames,
    open_media,
    packet_times,
    probe,
    read_video,
)

__all__ = ["EncodeOptions", "MEDIA_DEMUXERS", "VideoError", "VideoInfo", "VideoWriter", "check_input",
           "check_output_path", "duration", "fps_from_times", "iter_frames", "open_media", "packet_times", "probe",
           "read_video", "write_video"]
