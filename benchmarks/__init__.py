"""Benchmarks: each measurement runs in a process of its own; results are recorded in RESULTS.md."""
import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, not getrusage's ru_maxrss: that one survives
    execve, so a child started by a big parent reports the parent's peak (a fresh Python under a 600 MB
    parent reads 614 MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
