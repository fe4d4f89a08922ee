"""The trainer: presets, resume equivalence, NaN stopping, atomic and safe checkpoints."""

import json
import os
import pickle
import platform
import re
import shutil
from pathlib import Path

import pytest
import torch

from vae_tutorial import checkpoint as ckpt_mod
from vae_tutorial.checkpoint import CheckpointError, load_checkpoint, load_model, save_atomic
from vae_tutorial.config import PRESETS, TrainConfig, fast_mode, preset
from vae_tutorial.train import StopTraining, TrainingDiverged, kl_weight_at, lr_at, train


@pytest.fixture
def cfg(subset_root, tmp_path):
    """A tiny, quick, deterministic run on the subset."""
    return preset("fast", data=str(subset_root), allow_partial=True, train_limit=192,
                  test_limit=64, batch_size=32, epochs=4, out_dir=str(tmp_path / "run"),
                  progress=False, device="cpu", width=8, latent_dim=8)


def test_presets_exist_and_fast_is_small():
    assert set(PRESETS) == {"fast", "cpu", "gpu"}
    fast, cpu, gpu = PRESETS["fast"], PRESETS["cpu"], PRESETS["gpu"]
    assert fast.train_limit is not None and fast.train_limit <= 1000
    assert cpu.train_limit is None and gpu.train_limit is None
    assert gpu.epochs > cpu.epochs > fast.epochs


def test_fast_mode_switch_selects_the_preset(monkeypatch):
    monkeypatch.setenv("VAE_TUTORIAL_FAST", "1")
    assert fast_mode() and preset() == PRESETS["fast"]
    monkeypatch.setenv("VAE_TUTORIAL_FAST", "0")
    assert not fast_mode() and preset() == PRESETS["cpu"]


def test_config_rejects_unknown_fields_and_round_trips():
    with pytest.raises(ValueError, match="unknown config field"):
        preset("cpu", widht=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("tpu")
    c = preset("cpu", width=7)
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_schedules():
    c = TrainConfig(lr=1.0, lr_warmup_steps=10, lr_final=0.1, beta=2.0, kl_warmup_epochs=2)
    assert lr_at(c, 0, 100) == pytest.approx(0.1)
    assert lr_at(c, 9, 100) == pytest.approx(1.0)
    assert lr_at(c, 100, 100) == pytest.approx(0.1)
    assert kl_weight_at(c, 1.0) == pytest.approx(1.0) and kl_weight_at(c, 5.0) == 2.0
    assert lr_at(c, 50, 100, progress=1.0) == pytest.approx(0.1)  # the clock overrides steps
    assert lr_at(c, 50, 100, progress=0.0) == pytest.approx(1.0)


def test_time_limit_stops_the_run_and_decays_the_lr_on_the_clock(cfg):
    history = train(cfg.replace(epochs=10_000, time_limit=0.05, lr_warmup_steps=1))  # 3 s
    assert 1 <= len(history) < 10_000
    assert sum(h["seconds"] for h in history) < 3.0 + 2.0
    assert history[-1]["lr"] < 0.3 * cfg.lr  # the cosine decayed although few epochs ran


def test_training_improves_and_writes_history(cfg):
    history = train(cfg)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    assert history[-1]["test_bpd"] < history[0]["test_bpd"]
    for h in history:  # the ELBO identity holds for the logged averages
        assert h["train_elbo"] == pytest.approx(h["train_reconstruction"] - h["train_kl"])
    on_disk = json.loads((cfg.out_dir and open(os.path.join(cfg.out_dir, "history.json"))).read())
    assert on_disk == json.loads(json.dumps(history))
    assert os.path.exists(os.path.join(cfg.out_dir, "history.csv"))


def test_resume_equals_straight_run(cfg, tmp_path):
    """2 epochs, then 2 more resumed == 4 epochs straight: same weights, same metrics."""
    straight = train(cfg.replace(out_dir=str(tmp_path / "a")))

    def stop_after_two(record, model):
        if record["epoch"] == 2:
            raise StopTraining

    half = cfg.replace(out_dir=str(tmp_path / "b"))
    assert len(train(half, callback=stop_after_two)) == 2
    resumed = train(half, resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        for key in ("train_elbo", "test_elbo", "train_kl"):
            assert a[key] == b[key], key
    wa = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_stops_training_and_keeps_last_good_checkpoint(cfg, monkeypatch):
    train(cfg.replace(epochs=1))
    path = os.path.join(cfg.out_dir, "checkpoint.pt")
    before = open(path, "rb").read()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match="NaN/inf.*left untouched"):
        train(cfg, resume=True)
    assert open(path, "rb").read() == before


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(3)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


class Exploit:
    """Unpickling this runs code: os.system would be called."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_refuses_a_pickle_that_would_run_code(tmp_path, monkeypatch):
    path, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"format": 1, "model": {}, "model_config": {}, "x": Exploit()}, path)
    raw.write_bytes(pickle.dumps(Exploit()))  # a plain pickle, not a torch zip file
    ran = []
    monkeypatch.setattr(os, "system", lambda cmd: ran.append(cmd))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="evil.pkl"):
        load_checkpoint(raw)
    assert ran == []


def test_missing_truncated_corrupt_and_mismatched_checkpoints(cfg, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        load_checkpoint(tmp_path / "nope.pt")
    train(cfg.replace(epochs=1))
    good = open(os.path.join(cfg.out_dir, "checkpoint.pt"), "rb").read()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    for seed in range(20):  # random bytes break the unpickler in many different ways
        garbage.write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(seed)).numpy()
                            .tobytes())
        with pytest.raises(CheckpointError, match="garbage.pt"):
            load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="not a vae_tutorial checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="differs from this run"):
        train(cfg.replace(width=16), resume=True)
    ck = load_checkpoint(os.path.join(cfg.out_dir, "checkpoint.pt"))
    ck["model_config"]["latent_dim"] = 9  # weights no longer fit
    bad = tmp_path / "mismatch.pt"
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit"):
        load_model(bad)


def test_half_precision_weights_load(cfg, tmp_path):
    train(cfg.replace(epochs=1))
    ck = load_checkpoint(os.path.join(cfg.out_dir, "checkpoint.pt"))
    model, _ = load_model(os.path.join(cfg.out_dir, "checkpoint.pt"))
    ck["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["model"].items()}
    small = tmp_path / "half.pt"
    torch.save(ck, small)
    half, _ = load_model(small)
    x = torch.rand(2, 3, 32, 32)
    mean_a, _ = model.encode(x)
    mean_b, _ = half.encode(x)
    assert torch.allclose(mean_a, mean_b, atol=5e-2)
    assert ckpt_mod.FORMAT == ck["format"]


def test_cuda_request_without_cuda_is_a_clear_error(cfg):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available.*--device cpu"):
        train(cfg.replace(device="cuda"))


def test_channels_last_is_harmless_on_cpu(cfg):
    """channels_last (on by default on CUDA) gives the same run as the default layout on a CPU."""
    plain = train(cfg.replace(epochs=1, amp=False, channels_last=False))
    fast = train(cfg.replace(epochs=1, amp=False, channels_last=True,
                             out_dir=cfg.out_dir + "-cl"))
    assert fast[-1]["train_elbo"] == pytest.approx(plain[-1]["train_elbo"], rel=1e-4)


@pytest.mark.slow
def test_torch_compile_trains(cfg):
    """The opt-in torch.compile path trains and matches eager mode (compiles for ~1 min)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    eager = train(cfg.replace(epochs=1, amp=False))
    compiled = train(cfg.replace(epochs=1, amp=False, compile=True, out_dir=cfg.out_dir + "-c"))
    assert compiled[-1]["train_elbo"] == pytest.approx(eager[-1]["train_elbo"], rel=1e-3)


def test_amp_is_bf16_where_native_and_close_to_fp32(cfg):
    """amp (the default) trains in bf16 on CPUs that compute it natively, else in fp32; a bf16
    run lands near the fp32 one."""
    from vae_tutorial.train import autocast_enabled, cpu_bf16_supported

    cpu = torch.device("cpu")
    assert cfg.amp and autocast_enabled(cfg, cpu) == cpu_bf16_supported()
    assert not autocast_enabled(cfg.replace(amp=False), cpu)
    fp32 = train(cfg.replace(epochs=1, amp=False))
    bf16 = train(cfg.replace(epochs=1, amp=True, out_dir=cfg.out_dir + "-bf16"))
    assert bf16[-1]["train_elbo"] == pytest.approx(fp32[-1]["train_elbo"], rel=2e-2)
    if cpu_bf16_supported():  # the two runs differ: bf16 really was used
        assert bf16[-1]["train_elbo"] != fp32[-1]["train_elbo"]


def test_amp_stays_fp32_where_bf16_is_not_native(cfg, monkeypatch):
    """On a CPU without native bf16 (emulated there, and slower) amp=True trains exactly as fp32."""
    import vae_tutorial.train as train_module

    monkeypatch.setattr(train_module, "cpu_bf16_supported", lambda: False)
    assert not train_module.autocast_enabled(cfg.replace(amp=True), torch.device("cpu"))
    amp = train(cfg.replace(epochs=1, amp=True))
    fp32 = train(cfg.replace(epochs=1, amp=False, out_dir=cfg.out_dir + "-fp32"))
    assert amp[-1]["precision"] == fp32[-1]["precision"] == "fp32"
    assert amp[-1]["train_elbo"] == fp32[-1]["train_elbo"]


@pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
                    reason="reads the x86 CPU flags of Linux")
def test_cpu_bf16_check_matches_the_cpu_flags():
    """bf16 counts as native only with AMX or AVX512-BF16, as the kernel reports the CPU."""
    from vae_tutorial.train import cpu_bf16_supported

    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
                .group(1).split())
    assert cpu_bf16_supported() == bool({"amx_bf16", "avx512_bf16"} & flags)
