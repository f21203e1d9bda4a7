"""DiT weights in diffusers' layout (robuq.diffusers_layout): a small random DiTTransformer2DModel saved with
save_pretrained (in a whole DiTPipeline folder with a tiny VAE and a scheduler) is read as the official DiT
state dict by robuq-export, robuq-parity, robuq-train --init and --vae.

* The mapping is right: diffusers' model with DiT's two semantic settings (timestep frequency shift 0,
  MLP LayerNorm eps 1e-6) and our reference DiT on the mapped weights agree to float32 rounding (<= 1e-5
  relative); with diffusers' own settings they differ by percent (documented in docs/dit.md).
* The exported .rq runs in the engine within 1e-4 relative of the reference DiT on the mapped weights.
* The pipeline folder, its transformer/ folder and the weights file give the same tensors; official-layout
  .safetensors export like the .pt; what DiT cannot express is refused with one error line and no file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is needed to write the diffusers layout")

from robuq import Engine, models  # noqa: E402
from robuq.diffusers_layout import DiffusersLayoutError, read_diffusers  # noqa: E402
from robuq.exporter.cli import main as export_main  # noqa: E402
from robuq.latent import vae_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HEADS, HEAD_DIM, DEPTH, C, SIZE, CLASSES = 3, 32, 2, 4, 8, 10


def _transformer(seed: int = 0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    m = DiTTransformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=C,
        out_channels=2 * C,
        num_layers=DEPTH,
        sample_size=SIZE,
        patch_size=2,
        num_embeds_ada_norm=CLASSES,
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():  # no zero-initialised layers: every tensor matters
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        emb0 = m.transformer_blocks[0].norm1.emb
        for blk in m.transformer_blocks[1:]:  # diffusers' per-block embedder copies hold the same weights
            blk.norm1.emb.load_state_dict(emb0.state_dict())
    return m.eval()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    root = tmp_path_factory.mktemp("diffusers")
    transformer = _transformer()
    torch.manual_seed(3)
    vae = AutoencoderKL(
        block_out_channels=(8,), layers_per_block=1, norm_num_groups=8, latent_channels=4, sample_size=16
    )
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    pipe.save_pretrained(root / "pipe")
    return root / "pipe", transformer


def _inputs(n: int = 3):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, C, SIZE, SIZE, generator=g)
    t = torch.tensor([999, 400, 1])[:n]
    y = torch.tensor([1, 9, CLASSES])[:n]  # the last one is the null class (CFG)
    return x, t, y


def _reference(sd, cfg) -> models.DiT:
    m = models.DiT(cfg)
    m.load_state_dict(sd, strict=True)
    return m.eval()


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_mapping_matches_diffusers_with_dit_semantics(pipeline):
    folder, transformer = pipeline
    sd, cfg, source = read_diffusers(folder)
    assert "DiTTransformer2DModel" in source
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (DEPTH, HEADS * HEAD_DIM, HEADS, 2)
    assert (cfg.input_size, cfg.in_channels, cfg.num_classes, cfg.learn_sigma) == (SIZE, C, CLASSES, True)
    assert cfg.class_dropout_prob > 0  # the class table has the null row
    ref = _reference(sd, cfg)
    x, t, y = _inputs()
    with torch.no_grad():
        ours = ref(x, t, y).numpy()
        theirs = transformer(hidden_states=x, timestep=t, class_labels=y).sample.numpy()
        differs = _rel(ours, theirs)
        for blk in transformer.transformer_blocks:  # DiT's semantics in diffusers' model
            blk.norm1.emb.time_proj.downscale_freq_shift = 0
            blk.norm3.eps = 1e-6
        same = transformer(hidden_states=x, timestep=t, class_labels=y).sample.numpy()
        for blk in transformer.transformer_blocks:
            blk.norm1.emb.time_proj.downscale_freq_shift = 1
            blk.norm3.eps = 1e-5
    assert _rel(ours, same) < 1e-5, _rel(ours, same)
    assert differs > 1e-3, differs  # the semantic difference docs/dit.md describes is real


def test_folder_transformer_and_file_read_alike(pipeline):
    folder, _ = pipeline
    a, ca, _ = read_diffusers(folder)
    b, cb, _ = read_diffusers(folder / "transformer")
    c, cc, _ = read_diffusers(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert ca == cb == cc and a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert vae_folder(folder) == folder / "vae" and vae_folder(folder / "vae") == folder / "vae"


def test_export_and_engine_parity(pipeline, tmp_path):
    folder, _ = pipeline
    rq = tmp_path / "d.rq"
    assert export_main([str(folder), "-o", str(rq), "-q", "--allow-fp"]) == 0
    sd, cfg, _ = read_diffusers(folder)
    ref = _reference(sd, cfg)
    x, t, y = _inputs()
    with torch.no_grad():
        want = ref(x, t, y).numpy()
    got = Engine(str(rq), threads=1).forward(x.numpy(), t.numpy(), y.numpy())
    assert _rel(got, want) <= 1e-4, _rel(got, want)
    from robuq.parity import main as parity_main

    assert parity_main([str(rq), str(folder), "--threads", "1"]) == 0  # robuq-parity reads the folder too


def test_official_safetensors_exports_like_pt(tmp_path):
    from safetensors.torch import save_file

    from robuq.exporter.rq import load_rq

    torch.manual_seed(0)
    m = models.create("DiT-S/2", depth=2, hidden_size=96, num_heads=3, input_size=8, in_channels=4)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for src in ("w.pt", "w.safetensors"):
        assert (
            export_main(
                [
                    str(tmp_path / src),
                    "-o",
                    str(tmp_path / f"{src}.rq"),
                    "--num-heads",
                    "3",
                    "-q",
                    "--allow-fp",
                ]
            )
            == 0
        )
    (ma, a), (mb, b) = load_rq(tmp_path / "w.pt.rq"), load_rq(tmp_path / "w.safetensors.rq")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert ma["model_config"] == mb["model_config"]


def _copy_pipeline(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "case,needle",
    [
        ("norm_type", "norm_type"),
        ("activation", "activation_fn"),
        ("embedder_differs", "differs from block 0's copy"),
        ("extra_tensor", "no place for"),
        ("missing_tensor", "lack"),
        ("out_channels", "out_channels"),
    ],
)
def test_refusals(pipeline, tmp_path, capsys, case, needle):
    from safetensors.torch import load_file, save_file

    folder = _copy_pipeline(pipeline[0], tmp_path / "p")
    tdir = folder / "transformer"
    cfg_path, w_path = tdir / "config.json", tdir / "diffusion_pytorch_model.safetensors"
    cfg = json.loads(cfg_path.read_text())
    w = load_file(str(w_path))
    if case == "norm_type":
        cfg["norm_type"] = "ada_norm_single"
    elif case == "activation":
        cfg["activation_fn"] = "geglu"
    elif case == "out_channels":
        cfg["out_channels"] = 5
    elif case == "embedder_differs":
        k = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
        w[k] = w[k] + 1e-3
    elif case == "extra_tensor":
        w["transformer_blocks.0.attn2.to_q.weight"] = torch.zeros(4, 4)
    elif case == "missing_tensor":
        del w["transformer_blocks.1.attn1.to_v.bias"]
    cfg_path.write_text(json.dumps(cfg))
    save_file(w, str(w_path))
    with pytest.raises(DiffusersLayoutError, match=needle):
        read_diffusers(folder)
    out = tmp_path / "x.rq"
    assert export_main([str(folder), "-o", str(out), "-q", "--allow-fp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robuq-export: error:") and needle in err[0], err
    assert not out.exists()


def test_train_init_from_pipeline(pipeline):
    from robuq.train import build_parser, load_init

    folder, _ = pipeline
    args = build_parser().parse_args(["--data", "digits", "--init", str(folder)])
    model = load_init(args)
    sd, cfg, _ = read_diffusers(folder)
    assert model.config == cfg
    got = model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_vae_from_pipeline_folder(pipeline):
    from robuq.latent import load_vae

    vae = load_vae(pipeline[0])
    assert vae.config.latent_channels == 4
