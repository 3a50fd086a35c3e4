"""A batch of windows sampled entirely on the GPU: no host round trip per step.

Per step, on the backend's one stream: the timestep row is copied into the UNet's input (device to device,
from a table uploaded once), ``scatter_noisy`` writes the noisy latents into channels 0..3 of the 3W-row
UNet input (the context latents and masks were uploaded once), the UNet runs (its CUDA graph), and
``sampler_step`` applies the CFG combine and the sampler's linear update with its history. The host only
rotates buffer pointers; the latents come back once, at the end. The arithmetic is the one of
``runtime.samplers.run`` with ``runtime.guidance.combine`` (the kernels' numpy references), in FP32.
"""
from __future__ import annotations

import numpy as np

from runtime.engines import cuda

THREADS, BLOCKS = 256, 1024


class DeviceSampler:
    def __init__(self, engine, stream: cuda.Stream, arch: str):
        import kernels
        from runtime.engines.device_kernels import Module
        self.engine, self.stream = engine, stream
        self.step = Module("sampler_step", arch)
        self.scatter = Module("unet_input", arch)
        self.max_history = kernels.MAX_HISTORY
        self.suffix = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32"}

    def supports(self, sampler) -> bool:
        return sampler.history <= self.max_history and all(len(u.eps) <= 1 + self.max_history
                                                           for u in sampler.updates)

    def run(self, profile: int, sampler, x0, noise, rows, fps_rows, ctx_rows, s1, s2, step_noise=None,
            callback=None) -> np.ndarray:
        """The final latents [W, 4, F, h, w] of W windows; ``rows`` [3W, 5, F, h, w] are the UNet input's
        channels 4..8 (context latents, mask) in branch-major order, as the host loop builds them."""
        engine, stream = self.engine, self.stream
        w = x0.shape[0]
        n = rows.shape[0]
        plane = int(np.prod(x0.shape[2:]))
        sample = np.zeros((n, 9, *x0.shape[2:]), np.float32)
        sample[:, 4:] = rows
        shapes = {"sample": sample.shape, "timestep": (n,), "fps": (n,), "context": ctx_rows.shape}
        key = engine.prepare(profile, shapes, {"sample": sample, "fps": fps_rows, "context": ctx_rows})
        engine.forget("sample")  # its channels 0..3 are written on the device from here on
        engine.forget("timestep")
        table = np.repeat(np.asarray(sampler.timesteps, np.float32)[:, None], n, axis=1)
        x = sampler.add_noise(np.asarray(x0, np.float32), np.asarray(noise, np.float32))
        nbytes = x.nbytes
        keep: list = []  # every buffer of this batch, freed once the stream is done

        def device(nb):
            keep.append(cuda.DeviceBuffer(nb))
            return keep[-1]

        try:
            d_table = cuda.upload_array(stream, table, keep)
            cur, nxt, saved = cuda.upload_array(stream, x, keep), device(nbytes), device(nbytes)
            free = [device(nbytes) for _ in range(self.max_history + 1)]
            hist: list = []
            z_host = d_z = None
            if any(u.noise for u in sampler.updates):
                d_z = device(nbytes)
                z_host = cuda.PinnedBuffer(nbytes)
                keep.append(z_host)
            eps_kernel = f"sampler_step_{self.suffix[engine.dtypes['eps']]}"
            scatter_kernel = f"scatter_noisy_{self.suffix[engine.dtypes['sample']]}"
            row_bytes = n * 4
            for i, (t, u) in enumerate(zip(sampler.timesteps, sampler.updates)):
                stream.copy(engine.device["timestep"].ptr, d_table.ptr + i * row_bytes, row_bytes)
                self.scatter.launch(scatter_kernel, [cur, engine.device["sample"], np.int64(plane), np.int32(w)],
                                    stream, THREADS, BLOCKS)
                engine.launch(key)
                if u.noise:
                    assert z_host is not None and d_z is not None  # made above: some update draws noise
                    stream.synchronize()  # the pinned noise buffer is free again
                    z_host.view(x.shape, np.float32)[...] = step_noise(i, x.shape)
                    stream.upload(d_z, z_host, nbytes)
                g = free.pop()
                b = list(u.eps) + [0.0] * (1 + self.max_history - len(u.eps))
                h = [hist[k] if k < len(hist) and b[k + 1] else 0 for k in range(self.max_history)]
                self.step.launch(eps_kernel, [engine.device["eps"], cur, saved if u.saved else 0, *h,
                                              d_z if u.noise else 0, nxt, g, np.int64(plane * 4), np.int32(w),
                                              np.float32(s1), np.float32(s2), np.float32(u.x), np.float32(u.saved),
                                              *map(np.float32, b), np.float32(u.noise)], stream, THREADS, BLOCKS)
                if u.save:  # x_saved = this step's input
                    cur, nxt, saved = nxt, saved, cur
                else:
                    cur, nxt = nxt, cur
                if u.keep_eps:
                    hist.insert(0, g)
                    if len(hist) > sampler.history:
                        free.append(hist.pop())
                else:
                    free.append(g)
                if callback is not None:
                    callback(i, t)
            out = cuda.PinnedBuffer(nbytes)
            keep.append(out)
            stream.download(out, cur, nbytes)
            stream.synchronize()
            return out.view(x.shape, np.float32).copy()
        finally:
            stream.synchronize()
            for buf in keep:
                buf.free()
