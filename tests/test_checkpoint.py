"""The model's keys and shapes equal the released checkpoint's; checkpoints load or are refused clearly."""
import json
import os
import subprocess
import sys

import pytest
import torch

from export.model import CheckpointError, UNetConfig, build_unet, load_unet, save_unet

RELEASED_PARAMETERS = 1_299_279_320


def manifest(shared):
    rows = shared("reference/m3ddm_unet_state_dict.tsv").read_text().splitlines()
    return {k: (json.loads(shape), dtype) for k, shape, dtype in (r.split("\t") for r in rows)}


def test_full_size_state_dict_equals_release_manifest(shared):
    config = UNetConfig.from_file(shared("reference/m3ddm_unet_config.json"))
    model = build_unet(config, device="meta")
    expected = manifest(shared)
    state = model.state_dict()
    assert list(state) and set(state) == set(expected)
    for key, tensor in state.items():
        shape, dtype = expected[key]
        assert list(tensor.shape) == shape, key
        assert str(tensor.dtype).removeprefix("torch.") == dtype, key
    assert model.num_parameters() == RELEASED_PARAMETERS
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers == 2019  # BatchNorm running statistics of the global encoder (docs/algorithm.md §1.6)


def test_default_config_is_the_released_one(shared):
    assert UNetConfig.from_file(shared("reference/m3ddm_unet_config.json")) == UNetConfig()


@pytest.mark.parametrize("folder", ["fixtures/tiny_unet", "fixtures/tiny_unet_bin"])
def test_fixtures_load_strictly(shared, folder):
    model = load_unet(shared(folder))
    assert model.config.block_out_channels == (32, 64, 64, 64)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training


def test_safetensors_fp16_and_bin_fp32_hold_the_same_weights(shared):
    a = load_unet(shared("fixtures/tiny_unet")).state_dict()
    b = load_unet(shared("fixtures/tiny_unet_bin")).state_dict()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key].half().float(), rtol=0, atol=0, msg=key)


def test_load_in_fp16(checkpoints):
    model = load_unet(checkpoints[0], dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    bn = model.global_img_encoder.resnet_layer[0].layers[0].layer[0].normalization
    assert bn.num_batches_tracked.dtype == torch.int64


@pytest.mark.parametrize("safe,dtype", [(True, torch.float16), (False, torch.float32)])
def test_save_and_load_round_trip(tmp_path, tiny_config, safe, dtype):
    torch.manual_seed(0)
    model = build_unet(tiny_config)
    save_unet(model, tmp_path / "ckpt", safe=safe, dtype=dtype)
    loaded = load_unet(tmp_path / "ckpt")
    for key, value in model.state_dict().items():
        want = value.to(dtype).to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], want), key


def test_unet_subfolder_layout(tmp_path, tiny_config):
    save_unet(build_unet(tiny_config), tmp_path / "repo" / "unet")
    assert load_unet(tmp_path / "repo").config == tiny_config


def _tampered_checkpoint(tmp_path, tiny_config, edit):
    from safetensors.torch import save_file
    model = build_unet(tiny_config)
    save_unet(model, tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit(state)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    return tmp_path


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, tiny_config):
    def edit(state):
        del state["conv_in.weight"]
        state["extra.weight"] = torch.zeros(3)
        state["conv_out.temporal_conv.weight"] = torch.zeros(4, 4, 5)

    folder = _tampered_checkpoint(tmp_path, tiny_config, edit)
    with pytest.raises(CheckpointError) as err:
        load_unet(folder)
    message = str(err.value)
    assert "\n" not in message
    assert "1 missing keys: conv_in.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "conv_out.temporal_conv.weight [4, 4, 5] (expected [4, 4, 3])" in message


def test_config_of_another_model_is_refused(tmp_path, tiny_config):
    save_unet(build_unet(tiny_config), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["up_block_types"] = ["UpBlock3D"] * 4
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="up_block_types"):
        load_unet(tmp_path)


def test_full_config_against_tiny_weights_lists_shape_mismatches(tmp_path, tiny_config):
    save_unet(build_unet(tiny_config), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(UNetConfig().to_dict()))  # the released model's
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: .*and \d+ more"):
        load_unet(tmp_path)


def test_bin_with_pickled_code_is_refused(tmp_path, tiny_config):
    save_unet(build_unet(tiny_config), tmp_path, safe=False)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"conv_in.weight": Payload()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_unet(tmp_path)


def test_sources_that_do_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing folder nor a hub repo id"):
        load_unet(str(tmp_path / "nope" / "deeper" / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_unet(tmp_path / "empty")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(UNetConfig().to_dict()))
    with pytest.raises(CheckpointError, match="has no weights"):
        load_unet(tmp_path / "cfg")


def test_offline_hub_source_names_the_repo_and_the_way_out(tmp_path):
    """Offline with no cached copy: one line naming the repo and how to pass a local folder."""
    code = ("from export.model import load_unet, CheckpointError\n"
            "try:\n    load_unet('alimama-creative/M3DDM-Video-Outpainting')\n"
            "except CheckpointError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    line = out.stdout.strip()
    assert line.startswith("ERR "), out.stderr
    assert "alimama-creative/M3DDM-Video-Outpainting" in line and "local folder" in line
    assert "\n" not in line


def test_vae_loads_from_folder_and_from_a_repo_layout(checkpoints, tmp_path):
    import shutil

    from export.model import load_vae
    vae = load_vae(checkpoints[1])
    assert vae.config.latent_channels == 4
    shutil.copytree(checkpoints[1], tmp_path / "sd15" / "vae")
    again = load_vae(tmp_path / "sd15")
    for (k, a), b in zip(vae.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_full_size_random_weights_round_trip_through_fp16_safetensors(tmp_path):
    """Full-size weights the test makes: saved in the official format, loaded back, equal after fp16 rounding."""
    torch.manual_seed(0)
    model = build_unet(UNetConfig())
    save_unet(model, tmp_path, dtype=torch.float16)
    state = model.state_dict()
    del model
    loaded = load_unet(tmp_path, dtype=torch.float16)
    assert loaded.num_parameters() == RELEASED_PARAMETERS
    for key, value in loaded.state_dict().items():
        want = state[key].half() if state[key].is_floating_point() else state[key]
        assert torch.equal(value, want), key
