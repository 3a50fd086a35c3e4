"""Facts about the released model that the export side and the runtime both rely on.

Each fact lives here once; everything else imports it (docs/algorithm.md §1 says where each comes from).
"""

# Stable Diffusion 1.5 VAE latent scale: latents fed to the UNet are posterior means times this.
VAE_SCALE_FACTOR = 0.18215

# The VAE downsamples by 8 in each spatial direction.
VAE_DOWNSAMPLE = 8

# Model size S in pixels for the released weights (the S x S canvas); tests use 64.
RELEASED_MODEL_SIZE = 256

# Frames per window and number of global frames, as the released model was trained.
WINDOW_FRAMES = 16
GLOBAL_FRAMES = 16

# Default guidance scales: s1 for the local context, s2 for the global frames.
DEFAULT_GUIDANCE = (2.0, 4.0)

# Where the released weights live on the Hugging Face hub.
RELEASED_UNET_REPO = "alimama-creative/M3DDM-Video-Outpainting"
RELEASED_VAE_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
RELEASED_VAE_SUBFOLDER = "vae"
